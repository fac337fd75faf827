//! `--metrics-addr`: Prometheus metrics and a health check for a running receiver.
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
//! `walrelay_build_info` the version. LSNs are exposed as numbers: the byte position in the WAL,
//! `X/Y` being `X * 2^32 + Y` — so the difference of two of them is a distance in bytes, as
//! `pg_wal_lsn_diff` gives it (exact up to 2^53 bytes, 8 PiB of WAL).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tracing::{info, warn};
use walrelay_walreceiver::{ReceiverStats, StatsSnapshot};

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

/// Labels on every `walrelay_receive_*` series.
#[derive(Clone, Debug, Default)]
pub struct Labels {
    /// The slot streamed from; empty without one.
    pub slot: String,
    /// `archive` or `pg_wal`.
    pub mode: &'static str,
}

/// How a family is typed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Gauge,
    /// Only goes up; its sample is `<name>_total`.
    Counter,
    /// Constant 1 with labels describing something (a gauge in 0.0.4); its sample is
    /// `<name>_info`.
    Info,
}

/// One metric family with one sample.
struct Family {
    /// Without `_total` / `_info`.
    name: &'static str,
    help: &'static str,
    kind: Kind,
    labels: Vec<(&'static str, String)>,
    value: u64,
}

impl Family {
    fn sample_name(&self) -> String {
        match self.kind {
            Kind::Gauge => self.name.to_string(),
            Kind::Counter => format!("{}_total", self.name),
            Kind::Info => format!("{}_info", self.name),
        }
    }
}

/// `"` `\` and newlines escaped, as both formats want label values.
fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn families(s: &StatsSnapshot, labels: &Labels) -> Vec<Family> {
    use Kind::{Counter, Gauge, Info};
    let common = || {
        vec![
            ("slot", labels.slot.clone()),
            ("mode", labels.mode.to_string()),
        ]
    };
    let age = s.since_last_message().map_or(0, |d| d.as_secs());
    let receive: [(&'static str, &'static str, Kind, u64); 15] = [
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
    let mut out = vec![Family {
        name: "walrelay_build",
        help: "walrelay's version",
        kind: Info,
        labels: vec![("version", env!("CARGO_PKG_VERSION").to_string())],
        value: 1,
    }];
    let mut info_labels = common();
    info_labels.push(("timeline", s.timeline.to_string()));
    info_labels.push((
        "system_identifier",
        s.system_identifier
            .map(|v| v.to_string())
            .unwrap_or_default(),
    ));
    out.push(Family {
        name: "walrelay_receive_stream",
        help: "What is being received: slot, mode (archive or pg_wal), timeline, system identifier",
        kind: Info,
        labels: info_labels,
        value: 1,
    });
    out.extend(receive.into_iter().map(|(name, help, kind, value)| Family {
        name,
        help,
        kind,
        labels: common(),
        value,
    }));
    out
}

/// Renders a snapshot in `format`.
pub fn render(s: &StatsSnapshot, labels: &Labels, format: Format) -> String {
    let mut out = String::new();
    for f in families(s, labels) {
        let sample = f.sample_name();
        let labels = f
            .labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", escape_label(v)))
            .collect::<Vec<_>>()
            .join(",");
        let labels = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        match format {
            Format::Text => {
                let kind = match f.kind {
                    Kind::Counter => "counter",
                    Kind::Gauge | Kind::Info => "gauge",
                };
                let _ = writeln!(out, "# HELP {sample} {}", f.help);
                let _ = writeln!(out, "# TYPE {sample} {kind}");
            }
            Format::OpenMetrics => {
                let kind = match f.kind {
                    Kind::Counter => "counter",
                    Kind::Gauge => "gauge",
                    Kind::Info => "info",
                };
                let _ = writeln!(out, "# TYPE {} {kind}", f.name);
                let _ = writeln!(out, "# HELP {} {}", f.name, f.help.replace('"', "\\\""));
            }
        }
        let _ = writeln!(out, "{sample}{labels} {}", f.value);
    }
    if format == Format::OpenMetrics {
        out.push_str("# EOF\n");
    }
    out
}

/// Healthy while streaming and hearing from the server within a few status intervals.
pub fn healthy(s: &StatsSnapshot, status_interval: Duration) -> bool {
    let limit = status_interval.max(Duration::from_secs(10)).as_millis() as u64 * 3;
    s.connected
        && s.since_last_message()
            .is_some_and(|d| d.as_millis() as u64 <= limit)
}

/// Binds now (so a taken port is an error at startup) and serves in the background.
pub async fn serve(
    addr: SocketAddr,
    stats: Arc<ReceiverStats>,
    status_interval: Duration,
    labels: Labels,
) -> Result<()> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("listen for metrics on {addr}"))?;
    info!(%addr, "serving metrics on /metrics and health on /health");
    let labels = Arc::new(labels);
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
            let (stats, labels) = (stats.clone(), labels.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let snap = stats.snapshot();
                    let accept = req
                        .headers()
                        .get(hyper::header::ACCEPT)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string);
                    let labels = labels.clone();
                    async move {
                        let (status, content_type, body) = match req.uri().path() {
                            "/metrics" => {
                                let format = negotiate(accept.as_deref());
                                (
                                    StatusCode::OK,
                                    format.content_type(),
                                    render(&snap, &labels, format),
                                )
                            }
                            "/health" | "/healthz" => {
                                if healthy(&snap, status_interval) {
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
        let text = render(&s, &labels(), Format::Text);
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
        let om = render(&s, &labels(), Format::OpenMetrics);
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
