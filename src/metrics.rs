//! `--metrics-addr`: Prometheus metrics and a health check for a running command (`receive`,
//! `serve` — with one series per downstream —, `subset run`), each describing itself through an
//! [`Exporter`].
//!
//! `/metrics` speaks both exposition formats and picks by the request's `Accept` header (the
//! highest `q` wins): OpenMetrics 1.0.0 (`application/openmetrics-text`, what Prometheus asks for
//! first) or the classic text format 0.0.4 (`text/plain; version=0.0.4`, anything else). The two
//! differ where a parser notices: in 0.0.4 a counter's `# TYPE` line names the sample itself
//! (`x_total`), there is no `info` type (a gauge of 1) and no `# EOF`; in OpenMetrics a counter
//! family is named without `_total` and its sample with it, and the exposition ends with `# EOF`.
//!
//! Every `walrelay_receive_*` series carries `slot` (empty without one) and `mode` (`archive` or
//! `pg_wal`); `walrelay_receive_stream_info` adds the timeline and the system identifier, and
//! `walrelay_build_info` (on every endpoint) the version. LSNs are exposed as numbers: the byte
//! position in the WAL, `X/Y` being `X * 2^32 + Y` — so the difference of two of them is a
//! distance in bytes, as `pg_wal_lsn_diff` gives it (exact up to 2^53 bytes, 8 PiB of WAL).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tracing::{info, warn};
use walrelay_relay::{DownstreamSnapshot, RelayStats};
use walrelay_store::{UploadSnapshot, UploadStats};
use walrelay_walreceiver::{CommitPathSnapshot, HistogramSnapshot, ReceiverStats, StatsSnapshot};

/// `Content-Type` of the classic text format.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// `Content-Type` of OpenMetrics.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Which exposition format to answer with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Prometheus text format 0.0.4.
    Text,
    /// OpenMetrics 1.0.0.
    OpenMetrics,
}

impl Format {
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Text => TEXT_CONTENT_TYPE,
            Format::OpenMetrics => OPENMETRICS_CONTENT_TYPE,
        }
    }
}

/// The format an `Accept` header asks for: the supported media range with the highest `q`
/// (OpenMetrics on a tie); the text format when nothing supported is named, or no header is sent.
pub fn negotiate(accept: Option<&str>) -> Format {
    let Some(accept) = accept else {
        return Format::Text;
    };
    let mut best: Option<(f32, Format)> = None;
    for range in accept.split(',') {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or_default().to_ascii_lowercase();
        let mut q = 1.0f32;
        let mut version = None;
        for p in parts {
            if let Some((k, v)) = p.split_once('=') {
                match k.trim().to_ascii_lowercase().as_str() {
                    "q" => q = v.trim().parse().unwrap_or(0.0),
                    "version" => version = Some(v.trim().to_string()),
                    _ => {}
                }
            }
        }
        let format = match (media.as_str(), version.as_deref()) {
            ("application/openmetrics-text", None | Some("1.0.0") | Some("0.0.1")) => {
                Format::OpenMetrics
            }
            ("text/plain", None | Some("0.0.4")) | ("*/*" | "text/*", _) => Format::Text,
            _ => continue,
        };
        if q <= 0.0 {
            continue;
        }
        let better = match best {
            None => true,
            Some((bq, bf)) => q > bq || (q == bq && format == Format::OpenMetrics && bf != format),
        };
        if better {
            best = Some((q, format));
        }
    }
    best.map_or(Format::Text, |(_, f)| f)
}

/// How a family is typed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FamilyType {
    Gauge,
    /// Only goes up; its samples are `<name>_total`.
    Counter,
    /// Constant 1 with labels describing something (a gauge in 0.0.4); its samples are
    /// `<name>_info`.
    Info,
    /// Samples are [`Value::Histogram`]s, each rendered as `<name>_bucket{le=…}` (cumulative,
    /// ending with `+Inf`), `<name>_sum` and `<name>_count` — the same in both formats.
    Histogram,
}

/// A sample's value: integers stay exact (LSNs pass 2^53 only past 8 PiB of WAL, but byte counts
/// should never print in exponent notation).
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Int(u64),
    Float(f64),
    /// A histogram family's sample (seconds; see [`FamilyType::Histogram`]).
    Histogram(Box<HistogramSnapshot>),
}

impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Value::Int(v) => write!(f, "{v}"),
            Value::Float(v) => write!(f, "{v:.3}"),
            Value::Histogram(h) => write!(f, "{}", h.count()),
        }
    }
}

/// The labels of one sample, in order.
pub type LabelSet = Vec<(&'static str, String)>;

/// One metric family: its name (without `_total` / `_info`), help, type and samples.
#[derive(Clone, Debug)]
pub struct Family {
    pub name: String,
    pub help: &'static str,
    pub kind: FamilyType,
    pub samples: Vec<(LabelSet, Value)>,
}

impl Family {
    /// A family of one sample.
    pub fn one(
        name: impl Into<String>,
        help: &'static str,
        kind: FamilyType,
        labels: LabelSet,
        value: Value,
    ) -> Self {
        Family {
            name: name.into(),
            help,
            kind,
            samples: vec![(labels, value)],
        }
    }

    fn sample_name(&self) -> String {
        match self.kind {
            FamilyType::Gauge | FamilyType::Histogram => self.name.clone(),
            FamilyType::Counter => format!("{}_total", self.name),
            FamilyType::Info => format!("{}_info", self.name),
        }
    }
}

/// A plain value for [`families`]: a gauge can go down, a counter only up (and gets `_total`).
pub enum Kind {
    Gauge(u64),
    Counter(u64),
}

/// Unlabelled families `PREFIX_NAME` from `(name, help, value)`.
pub fn families(
    prefix: &str,
    metrics: impl IntoIterator<Item = (&'static str, &'static str, Kind)>,
) -> Vec<Family> {
    metrics
        .into_iter()
        .map(|(name, help, value)| {
            let (kind, v) = match value {
                Kind::Gauge(v) => (FamilyType::Gauge, v),
                Kind::Counter(v) => (FamilyType::Counter, v),
            };
            Family::one(
                format!("{prefix}_{name}"),
                help,
                kind,
                Vec::new(),
                Value::Int(v),
            )
        })
        .collect()
}

/// What a command serves on `--metrics-addr`.
pub trait Exporter: Send + Sync + 'static {
    /// The command's metric families (`walrelay_build_info` is added by [`serve`]).
    fn families(&self) -> Vec<Family>;
    /// Whether `/health` answers 200.
    fn healthy(&self) -> bool;
}

/// `walrelay_build_info`: walrelay's version.
fn build_info() -> Family {
    Family::one(
        "walrelay_build",
        "walrelay's version",
        FamilyType::Info,
        vec![("version", env!("CARGO_PKG_VERSION").to_string())],
        Value::Int(1),
    )
}

/// `"` `\` and newlines escaped, as both formats want label values.
fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The exposition of `families` in `format`.
pub fn render(families: &[Family], format: Format) -> String {
    let mut out = String::new();
    for f in families {
        let sample = f.sample_name();
        match format {
            Format::Text => {
                let kind = match f.kind {
                    FamilyType::Counter => "counter",
                    FamilyType::Gauge | FamilyType::Info => "gauge",
                    FamilyType::Histogram => "histogram",
                };
                let _ = writeln!(out, "# HELP {sample} {}", f.help);
                let _ = writeln!(out, "# TYPE {sample} {kind}");
            }
            Format::OpenMetrics => {
                let kind = match f.kind {
                    FamilyType::Counter => "counter",
                    FamilyType::Gauge => "gauge",
                    FamilyType::Info => "info",
                    FamilyType::Histogram => "histogram",
                };
                let _ = writeln!(out, "# TYPE {} {kind}", f.name);
                let _ = writeln!(out, "# HELP {} {}", f.name, f.help.replace('"', "\\\""));
            }
        }
        for (labels, value) in &f.samples {
            let labels = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", escape_label(v)))
                .collect::<Vec<_>>()
                .join(",");
            if let Value::Histogram(h) = value {
                render_histogram(&mut out, &sample, &labels, h);
                continue;
            }
            if labels.is_empty() {
                let _ = writeln!(out, "{sample} {value}");
            } else {
                let _ = writeln!(out, "{sample}{{{labels}}} {value}");
            }
        }
    }
    if format == Format::OpenMetrics {
        out.push_str("# EOF\n");
    }
    out
}

/// The samples of one histogram: cumulative buckets up to `+Inf`, the sum (seconds, every digit
/// Rust needs for the `f64`, never an exponent) and the count (equal to the `+Inf` bucket, as both
/// parsers check).
fn render_histogram(out: &mut String, name: &str, labels: &str, h: &HistogramSnapshot) {
    let sep = if labels.is_empty() { "" } else { "," };
    for (bound, cumulative) in h.cumulative() {
        let le = bound.map_or_else(|| "+Inf".to_string(), |b| format!("{b}"));
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {cumulative}"
        );
    }
    let labels = if labels.is_empty() {
        String::new()
    } else {
        format!("{{{labels}}}")
    };
    let _ = writeln!(out, "{name}_sum{labels} {}", h.sum_seconds());
    let _ = writeln!(out, "{name}_count{labels} {}", h.count());
}

/// Whether a stream heard from its server recently enough: within three status intervals (at
/// least 30 s), while connected.
pub fn heard_recently(
    connected: bool,
    since_last_message: Option<Duration>,
    status_interval: Duration,
) -> bool {
    let limit = status_interval.max(Duration::from_secs(10)).as_millis() as u64 * 3;
    connected && since_last_message.is_some_and(|d| d.as_millis() as u64 <= limit)
}

/// Labels on every `walrelay_receive_*` series.
#[derive(Clone, Debug, Default)]
pub struct Labels {
    /// The slot streamed from; empty without one.
    pub slot: String,
    /// `archive` or `pg_wal`.
    pub mode: &'static str,
}

impl Labels {
    /// The labels every `walrelay_receive_*` sample carries.
    fn pairs(&self) -> Vec<(&'static str, String)> {
        vec![("slot", self.slot.clone()), ("mode", self.mode.to_string())]
    }
}

/// `receive`'s metrics, and the uploader's when WAL goes to object storage.
pub struct ReceiveExporter {
    pub stats: Arc<ReceiverStats>,
    pub labels: Labels,
    pub upload: Option<Arc<UploadStats>>,
    pub status_interval: Duration,
}

impl Exporter for ReceiveExporter {
    fn families(&self) -> Vec<Family> {
        let mut out = receive_families(&self.stats.snapshot(), &self.labels);
        out.push(commit_path_family(&self.stats.commit_path(), &self.labels));
        if let Some(u) = &self.upload {
            out.extend(families("walrelay_upload", upload_metrics(&u.snapshot())));
        }
        out
    }

    fn healthy(&self) -> bool {
        healthy(&self.stats.snapshot(), self.status_interval)
    }
}

/// `serve`'s metrics: the upstream stream's, then one series per downstream.
pub struct RelayExporter {
    pub receive: ReceiveExporter,
    pub relay: Arc<RelayStats>,
}

impl Exporter for RelayExporter {
    fn families(&self) -> Vec<Family> {
        let mut out = self.receive.families();
        out.extend(downstream_families(&self.relay.snapshot()));
        out
    }

    fn healthy(&self) -> bool {
        self.receive.healthy()
    }
}

/// The downstreams of a relay: their number, then a gauge per position and lag, each labelled
/// with the downstream's pid, application_name and client address, and its state as a separate
/// series (`state="streaming"` = 1).
pub fn downstream_families(downstreams: &[DownstreamSnapshot]) -> Vec<Family> {
    fn labels(d: &DownstreamSnapshot) -> LabelSet {
        vec![
            ("pid", d.pid.to_string()),
            ("application_name", d.application_name.clone()),
            ("client_addr", d.client_addr.ip().to_string()),
        ]
    }
    type Read = fn(&DownstreamSnapshot) -> Value;
    let series: [(&str, &'static str, Read); 7] = [
        ("sent_lsn", "End of the WAL sent, as a byte position", |d| {
            Value::Int(d.sent_lsn.0)
        }),
        (
            "write_lsn",
            "Write position the downstream reported, as a byte position",
            |d| Value::Int(d.write_lsn.0),
        ),
        (
            "flush_lsn",
            "Flush position the downstream reported, as a byte position",
            |d| Value::Int(d.flush_lsn.0),
        ),
        (
            "apply_lsn",
            "Replay position the downstream reported, as a byte position",
            |d| Value::Int(d.apply_lsn.0),
        ),
        (
            "lag_bytes",
            "Servable WAL the downstream has not confirmed as flushed (bytes)",
            |d| Value::Int(d.lag_bytes),
        ),
        (
            "lag_seconds",
            "Age of the oldest WAL the downstream has not confirmed as flushed",
            |d| Value::Float(d.lag.as_secs_f64()),
        ),
        ("timeline", "Timeline streamed", |d| {
            Value::Int(d.timeline.map_or(0, |t| u64::from(t.0)))
        }),
    ];
    let mut out = vec![Family::one(
        "walrelay_serve_downstreams",
        "Downstream connections",
        FamilyType::Gauge,
        Vec::new(),
        Value::Int(downstreams.len() as u64),
    )];
    for (name, help, read) in series {
        out.push(Family {
            name: format!("walrelay_serve_downstream_{name}"),
            help,
            kind: FamilyType::Gauge,
            samples: downstreams.iter().map(|d| (labels(d), read(d))).collect(),
        });
    }
    out.push(Family {
        name: "walrelay_serve_downstream_state".into(),
        help: "1 for the state the downstream is in (label state)",
        kind: FamilyType::Gauge,
        samples: downstreams
            .iter()
            .map(|d| {
                let mut l = labels(d);
                l.push(("state", d.state.as_str().to_string()));
                (l, Value::Int(1))
            })
            .collect(),
    });
    out
}

/// The `walrelay_receive_*` families of a snapshot.
pub fn receive_families(s: &StatsSnapshot, labels: &Labels) -> Vec<Family> {
    use FamilyType::{Counter, Gauge, Info};
    let common = || labels.pairs();
    let age = s.since_last_message().map_or(0, |d| d.as_secs());
    let receive: [(&'static str, &'static str, FamilyType, u64); 15] = [
        (
            "walrelay_receive_received_lsn",
            "End of the WAL received, as a byte position (LSN X/Y = X*2^32+Y; differences are bytes)",
            Gauge,
            s.received_lsn.0,
        ),
        (
            "walrelay_receive_written_lsn",
            "End of the WAL written to files, as a byte position",
            Gauge,
            s.written_lsn.0,
        ),
        (
            "walrelay_receive_flushed_lsn",
            "End of the durable (fsynced) WAL, as a byte position",
            Gauge,
            s.flushed_lsn.0,
        ),
        (
            "walrelay_receive_reported_flush_lsn",
            "Flush position last reported to the server (pg_stat_replication.flush_lsn), as a byte position; 0 when flush positions are not reported (no slot, not --synchronous)",
            Gauge,
            s.reported_flush_lsn.0,
        ),
        (
            "walrelay_receive_server_wal_end_lsn",
            "The server's end of WAL as last seen, as a byte position",
            Gauge,
            s.server_wal_end.0,
        ),
        (
            "walrelay_receive_lag_bytes",
            "Bytes of WAL the server has that are not durable here: server_wal_end_lsn - flushed_lsn",
            Gauge,
            s.server_wal_end.0.saturating_sub(s.flushed_lsn.0),
        ),
        (
            "walrelay_receive_timeline",
            "Timeline being received",
            Gauge,
            u64::from(s.timeline),
        ),
        (
            "walrelay_receive_connected",
            "1 while streaming, 0 otherwise",
            Gauge,
            u64::from(s.connected),
        ),
        (
            "walrelay_receive_last_message_age_seconds",
            "Seconds since the last message from the server (walrelay asks an idle server for one every 10 s)",
            Gauge,
            age,
        ),
        (
            "walrelay_receive_received_bytes",
            "WAL bytes received",
            Counter,
            s.bytes_received,
        ),
        (
            "walrelay_receive_reconnects",
            "Reconnections after transient failures",
            Counter,
            s.reconnects,
        ),
        (
            "walrelay_receive_segments_completed",
            "Segments completed (durable under their final name)",
            Counter,
            s.segments_completed,
        ),
        (
            "walrelay_receive_failovers",
            "Promotions followed: the server's history left the timeline the directory was on",
            Counter,
            s.failovers,
        ),
        (
            "walrelay_receive_failover_lost_commits",
            "Transactions committed on an old primary that the new one never had (orphaned WAL)",
            Counter,
            s.failover_lost_commits,
        ),
        (
            "walrelay_receive_failover_orphaned_bytes",
            "Bytes of WAL of an old timeline past the new timeline's switchpoint",
            Counter,
            s.failover_orphaned_bytes,
        ),
    ];
    let mut info_labels = common();
    info_labels.push(("timeline", s.timeline.to_string()));
    info_labels.push((
        "system_identifier",
        s.system_identifier
            .map(|v| v.to_string())
            .unwrap_or_default(),
    ));
    let mut out = vec![Family::one(
        "walrelay_receive_stream",
        "What is being received: slot, mode (archive or pg_wal), timeline, system identifier",
        Info,
        info_labels,
        Value::Int(1),
    )];
    out.extend(receive.into_iter().map(|(name, help, kind, value)| {
        Family::one(name, help, kind, common(), Value::Int(value))
    }));
    out
}

/// `walrelay_receive_commit_path_seconds`: the latency walrelay adds on a commit's path, from the
/// receipt of the oldest WAL not yet durable to the fsync (`stage="durable"`) and to the status
/// update reporting it written to the socket (`stage="acknowledged"`); see
/// [`walrelay_walreceiver::commit_path`].
pub fn commit_path_family(cp: &CommitPathSnapshot, labels: &Labels) -> Family {
    let sample = |stage: &str, h: &HistogramSnapshot| {
        let mut l = labels.pairs();
        l.push(("stage", stage.to_string()));
        (l, Value::Histogram(Box::new(*h)))
    };
    Family {
        name: "walrelay_receive_commit_path_seconds".into(),
        help: "Per flush cycle, seconds from the receipt of the oldest WAL not yet durable to its fsync (stage durable) and to the status update reporting it sent (stage acknowledged; only when flush positions are reported)",
        kind: FamilyType::Histogram,
        samples: vec![
            sample("durable", &cp.durable),
            sample("acknowledged", &cp.acknowledged),
        ],
    }
}

/// The exit log's line: p50 and p99 of both commit-path stages, when there were any samples.
pub fn log_commit_path(cp: &CommitPathSnapshot) {
    let us = |h: &HistogramSnapshot, q: f64| h.quantile(q).map_or(0, |s| (s * 1e6).round() as u64);
    if cp.durable.count() == 0 {
        return;
    }
    info!(
        cycles = cp.durable.count(),
        durable_p50_us = us(&cp.durable, 0.5),
        durable_p99_us = us(&cp.durable, 0.99),
        acknowledged = cp.acknowledged.count(),
        acknowledged_p50_us = us(&cp.acknowledged, 0.5),
        acknowledged_p99_us = us(&cp.acknowledged, 0.99),
        "commit path latency (WAL received to durable, and to the status update sent)"
    );
}

/// The uploader's metrics (`receive -D s3://… --spool DIR`), prefix `walrelay_upload_`.
fn upload_metrics(u: &UploadSnapshot) -> Vec<(&'static str, &'static str, Kind)> {
    use Kind::{Counter as C, Gauge as G};
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    // Seconds since a Unix-ms instant; 0 for "never" (0).
    let age_of = |ms: u64| match ms {
        0 => 0,
        ms => now.saturating_sub(ms) / 1000,
    };
    let age = age_of(u.last_success_unix_ms);
    vec![
        (
            "uploaded_lsn",
            "End of the WAL whose segments are all in the object store, as a byte position",
            G(u.uploaded_lsn.0),
        ),
        ("files", "Files uploaded", C(u.uploaded_files)),
        ("bytes", "Bytes uploaded", C(u.uploaded_bytes)),
        (
            "already_there",
            "Uploads that found an identical object already stored",
            C(u.already_there),
        ),
        ("failures", "Failed upload attempts", C(u.failures)),
        (
            "spool_pending_files",
            "Files in the spool waiting for an upload",
            G(u.pending_files),
        ),
        (
            "spool_pending_bytes",
            "Bytes in the spool waiting for an upload",
            G(u.pending_bytes),
        ),
        (
            "spool_oldest_pending_age_seconds",
            "Age of the oldest file waiting in the spool (0: none); it grows while the store hangs",
            G(age_of(u.oldest_pending_unix_ms)),
        ),
        ("failing", "1 while uploads fail", G(u64::from(u.failing))),
        (
            "last_success_age_seconds",
            "Seconds since the last successful upload (0: none yet)",
            G(age),
        ),
    ]
}

/// Healthy while streaming and hearing from the server within a few status intervals.
pub fn healthy(s: &StatsSnapshot, status_interval: Duration) -> bool {
    heard_recently(s.connected, s.since_last_message(), status_interval)
}

/// Binds now (so a taken port is an error at startup) and serves in the background.
pub async fn serve(addr: SocketAddr, exporter: Arc<dyn Exporter>) -> Result<()> {
    let listener = TcpListener::bind(addr).await.map_err(|e| {
        crate::exit::local(format!(
            "cannot listen for metrics on {addr}: {e}: {}",
            walrelay_client::bind_fix(&e, "--metrics-addr")
        ))
    })?;
    info!(%addr, "serving metrics on /metrics and health on /health");
    tokio::spawn(async move {
        loop {
            let (sock, _) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    warn!(error = %e, "metrics listener failed");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            let exporter = exporter.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let accept = req
                        .headers()
                        .get(hyper::header::ACCEPT)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string);
                    let (status, content_type, body) = match req.uri().path() {
                        "/metrics" => {
                            let format = negotiate(accept.as_deref());
                            let mut all = vec![build_info()];
                            all.extend(exporter.families());
                            (StatusCode::OK, format.content_type(), render(&all, format))
                        }
                        "/health" | "/healthz" => {
                            if exporter.healthy() {
                                (StatusCode::OK, "text/plain", "ok\n".to_string())
                            } else {
                                (
                                    StatusCode::SERVICE_UNAVAILABLE,
                                    "text/plain",
                                    "not streaming\n".to_string(),
                                )
                            }
                        }
                        _ => (
                            StatusCode::NOT_FOUND,
                            "text/plain",
                            "not found\n".to_string(),
                        ),
                    };
                    async move {
                        Response::builder()
                            .status(status)
                            .header("content-type", content_type)
                            .body(Full::new(Bytes::from(body)))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(sock), service)
                    .await;
            });
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels() -> Labels {
        Labels {
            slot: "a1".into(),
            mode: "archive",
        }
    }

    fn page(s: &StatsSnapshot, format: Format) -> String {
        let mut all = vec![build_info()];
        all.extend(receive_families(s, &labels()));
        render(&all, format)
    }

    #[test]
    fn accept_decides_the_format() {
        // What Prometheus 2.5x / 3.x sends by default: OpenMetrics first.
        let prometheus = "application/openmetrics-text;version=1.0.0;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2";
        assert_eq!(negotiate(Some(prometheus)), Format::OpenMetrics);
        // scrape_protocols: [PrometheusText0.0.4]
        assert_eq!(
            negotiate(Some("text/plain;version=0.0.4;q=1,*/*;q=0.1")),
            Format::Text
        );
        assert_eq!(negotiate(None), Format::Text);
        assert_eq!(negotiate(Some("*/*")), Format::Text);
        assert_eq!(negotiate(Some("application/json")), Format::Text);
        assert_eq!(
            negotiate(Some("application/openmetrics-text; version=2.0.0")),
            Format::Text,
            "a version we do not speak"
        );
        assert_eq!(
            negotiate(Some("text/plain;q=0.9, application/openmetrics-text;q=0.8")),
            Format::Text
        );
    }

    #[test]
    fn both_formats_type_every_sample() {
        let s = StatsSnapshot {
            flushed_lsn: walrelay_protocol::Lsn(100),
            server_wal_end: walrelay_protocol::Lsn(150),
            timeline: 2,
            connected: true,
            reconnects: 3,
            ..Default::default()
        };
        let text = page(&s, Format::Text);
        assert!(!text.contains("# EOF"), "{text}");
        assert!(
            text.contains("# TYPE walrelay_receive_reconnects_total counter\nwalrelay_receive_reconnects_total{slot=\"a1\",mode=\"archive\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("walrelay_receive_lag_bytes{slot=\"a1\",mode=\"archive\"} 50"),
            "{text}"
        );
        assert!(text.contains("# TYPE walrelay_build_info gauge"), "{text}");
        assert_eq!(text.matches("# HELP ").count(), 17, "{text}");
        let om = page(&s, Format::OpenMetrics);
        assert!(om.ends_with("# EOF\n"), "{om}");
        assert!(
            om.contains("# TYPE walrelay_receive_reconnects counter\n"),
            "{om}"
        );
        assert!(om.contains("walrelay_receive_reconnects_total{"), "{om}");
        assert!(om.contains("# TYPE walrelay_build info\n"), "{om}");
        assert!(
            om.contains("walrelay_receive_stream_info{slot=\"a1\",mode=\"archive\",timeline=\"2\",system_identifier=\"\"} 1"),
            "{om}"
        );
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn plain_families_and_several_samples() {
        let mut fams = families(
            "walrelay_upload",
            [
                ("failures", "Failed upload attempts", Kind::Counter(2)),
                ("failing", "1 while uploads fail", Kind::Gauge(1)),
            ],
        );
        fams.push(Family {
            name: "walrelay_x_lag_seconds".into(),
            help: "lag",
            kind: FamilyType::Gauge,
            samples: vec![
                (vec![("pid", "1".into())], Value::Float(0.25)),
                (vec![("pid", "2".into())], Value::Int(3)),
            ],
        });
        let text = render(&fams, Format::Text);
        assert!(
            text.contains("walrelay_upload_failures_total 2\n"),
            "{text}"
        );
        assert!(text.contains("walrelay_upload_failing 1\n"), "{text}");
        assert!(
            text.contains(
                "walrelay_x_lag_seconds{pid=\"1\"} 0.250\nwalrelay_x_lag_seconds{pid=\"2\"} 3\n"
            ),
            "{text}"
        );
        assert_eq!(text.matches("# TYPE walrelay_x_lag_seconds").count(), 1);
    }

    #[test]
    fn histograms_render_for_both_parsers() {
        let h = walrelay_walreceiver::commit_path::LatencyHistogram::default();
        h.record(Duration::from_micros(180));
        h.record(Duration::from_micros(180));
        h.record(Duration::from_secs(3));
        let cp = CommitPathSnapshot {
            durable: h.snapshot(),
            ..Default::default()
        };
        let fams = vec![commit_path_family(&cp, &labels())];
        let name = "walrelay_receive_commit_path_seconds";
        for format in [Format::Text, Format::OpenMetrics] {
            let out = render(&fams, format);
            assert!(out.contains(&format!("# TYPE {name} histogram\n")), "{out}");
            let common = "slot=\"a1\",mode=\"archive\",stage=\"durable\"";
            for line in [
                format!("{name}_bucket{{{common},le=\"0.00005\"}} 0\n"),
                format!("{name}_bucket{{{common},le=\"0.0002\"}} 2\n"),
                format!("{name}_bucket{{{common},le=\"1\"}} 2\n"),
                format!("{name}_bucket{{{common},le=\"+Inf\"}} 3\n"),
                format!("{name}_sum{{{common}}} 3.00036\n"),
                format!("{name}_count{{{common}}} 3\n"),
                format!("{name}_count{{slot=\"a1\",mode=\"archive\",stage=\"acknowledged\"}} 0\n"),
            ] {
                assert!(out.contains(&line), "{format:?}: no {line:?} in\n{out}");
            }
            assert_eq!(out.matches(&format!("{name}_bucket{{{common}")).count(), 23);
        }
        assert!(render(&fams, Format::OpenMetrics).ends_with("# EOF\n"));
        let p50 = cp.durable.quantile(0.5).unwrap();
        assert!(p50 > 150e-6 && p50 <= 200e-6, "{p50}");
    }

    #[test]
    fn health_follows_the_stream() {
        let s = StatsSnapshot {
            connected: true,
            ..Default::default()
        };
        assert!(
            !healthy(&s, Duration::from_secs(10)),
            "no message ever received"
        );
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or_default();
        let fresh = StatsSnapshot {
            last_message_unix_ms: now_ms - 2_000,
            ..s
        };
        assert!(healthy(&fresh, Duration::from_secs(10)));
        let stale = StatsSnapshot {
            last_message_unix_ms: now_ms - 31_000,
            ..s
        };
        assert!(
            !healthy(&stale, Duration::from_secs(10)),
            "30 s is the limit"
        );
        assert!(!healthy(
            &StatsSnapshot {
                connected: false,
                ..fresh
            },
            Duration::from_secs(10)
        ));
    }
}
