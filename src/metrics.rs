//! `--metrics-addr`: Prometheus metrics and a health check for a running command (`receive`,
//! `subset run`), each describing itself through an [`Exporter`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tracing::{info, warn};
use walrelay_store::{UploadSnapshot, UploadStats};
use walrelay_walreceiver::{ReceiverStats, StatsSnapshot};

/// How a value is exposed: a gauge can go down, a counter only up (and gets `_total`).
pub enum Kind {
    Gauge(u64),
    Counter(u64),
}

/// What a command serves on `--metrics-addr`.
pub trait Exporter: Send + Sync + 'static {
    /// The Prometheus text exposition.
    fn render(&self) -> String;
    /// Whether `/health` answers 200.
    fn healthy(&self) -> bool;
}

/// The Prometheus text exposition of `(name, help, value)` metrics under `prefix`.
pub fn render_metrics(
    prefix: &str,
    metrics: impl IntoIterator<Item = (&'static str, &'static str, Kind)>,
) -> String {
    render_groups(vec![(prefix, metrics.into_iter().collect())])
}

/// One metric: name, help text and value.
pub type Metric = (&'static str, &'static str, Kind);

/// One exposition of several groups of metrics, each under its own prefix.
pub fn render_groups(groups: Vec<(&str, Vec<Metric>)>) -> String {
    let mut reg = Registry::default();
    for (prefix, metrics) in groups {
        register(reg.sub_registry_with_prefix(prefix), metrics);
    }
    let mut out = String::new();
    let _ = encode(&mut out, &reg);
    out
}

/// Registers `(name, help, value)` metrics.
fn register(reg: &mut Registry, metrics: Vec<(&'static str, &'static str, Kind)>) {
    for (name, help, value) in metrics {
        match value {
            Kind::Gauge(v) => {
                let g: Gauge<i64> = Gauge::default();
                g.set(i64::try_from(v).unwrap_or(i64::MAX));
                reg.register(name, help, g);
            }
            Kind::Counter(v) => {
                let c: Counter = Counter::default();
                c.inc_by(v);
                reg.register(name, help, c);
            }
        }
    }
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

/// `receive`'s metrics, and the uploader's when WAL goes to object storage.
pub struct ReceiveExporter {
    pub stats: Arc<ReceiverStats>,
    pub upload: Option<Arc<UploadStats>>,
    pub status_interval: Duration,
}

impl Exporter for ReceiveExporter {
    fn render(&self) -> String {
        let upload = self.upload.as_ref().map(|u| u.snapshot());
        render_with_upload(&self.stats.snapshot(), upload.as_ref())
    }

    fn healthy(&self) -> bool {
        healthy(&self.stats.snapshot(), self.status_interval)
    }
}

/// The uploader's metrics (`receive -D s3://… --spool DIR`), prefix `walrelay_upload_`.
fn upload_metrics(u: &UploadSnapshot) -> Vec<(&'static str, &'static str, Kind)> {
    use Kind::{Counter as C, Gauge as G};
    let age = if u.last_success_unix_ms == 0 {
        0
    } else {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        now.saturating_sub(u.last_success_unix_ms) / 1000
    };
    vec![
        (
            "uploaded_lsn",
            "End of the WAL whose segments are all in the object store (bytes)",
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
        ("failing", "1 while uploads fail", G(u64::from(u.failing))),
        (
            "last_success_age_seconds",
            "Seconds since the last successful upload (0: none yet)",
            G(age),
        ),
    ]
}

/// Renders the Prometheus text exposition of a snapshot.
#[cfg(test)]
pub fn render(s: &StatsSnapshot) -> String {
    render_with_upload(s, None)
}

/// The receive metrics, plus the uploader's metrics when WAL goes to object storage.
pub fn render_with_upload(s: &StatsSnapshot, upload: Option<&UploadSnapshot>) -> String {
    use Kind::{Counter as C, Gauge as G};
    let age = s.since_last_message().map_or(0, |d| d.as_secs());
    let metrics = [
        (
            "received_lsn",
            "End of the WAL received (bytes)",
            G(s.received_lsn.0),
        ),
        (
            "written_lsn",
            "End of the WAL written to files (bytes)",
            G(s.written_lsn.0),
        ),
        (
            "flushed_lsn",
            "End of the durable WAL (bytes)",
            G(s.flushed_lsn.0),
        ),
        (
            "reported_flush_lsn",
            "Flush position last reported to the server (bytes)",
            G(s.reported_flush_lsn.0),
        ),
        (
            "server_wal_end_lsn",
            "The server's end of WAL as last seen (bytes)",
            G(s.server_wal_end.0),
        ),
        (
            "lag_bytes",
            "Server end of WAL minus durable WAL",
            G(s.server_wal_end.0.saturating_sub(s.flushed_lsn.0)),
        ),
        ("received_bytes", "WAL bytes received", C(s.bytes_received)),
        (
            "reconnects",
            "Reconnections after transient failures",
            C(s.reconnects),
        ),
        (
            "segments_completed",
            "Segments completed",
            C(s.segments_completed),
        ),
        (
            "failovers",
            "Promotions followed: the server's history left the timeline the directory was on",
            C(s.failovers),
        ),
        (
            "failover_lost_commits",
            "Transactions committed on an old primary that the new one never had (orphaned WAL)",
            C(s.failover_lost_commits),
        ),
        (
            "failover_orphaned_bytes",
            "Bytes of WAL of an old timeline past the new timeline's switchpoint",
            C(s.failover_orphaned_bytes),
        ),
        ("timeline", "Current timeline", G(u64::from(s.timeline))),
        ("connected", "1 while streaming", G(u64::from(s.connected))),
        (
            "last_message_age_seconds",
            "Seconds since the last message from the server",
            G(age),
        ),
    ];
    let mut groups = vec![("walrelay_receive", metrics.into())];
    if let Some(u) = upload {
        groups.push(("walrelay_upload", upload_metrics(u)));
    }
    render_groups(groups)
}

/// Healthy while streaming and hearing from the server within a few status intervals.
pub fn healthy(s: &StatsSnapshot, status_interval: Duration) -> bool {
    heard_recently(s.connected, s.since_last_message(), status_interval)
}

/// Binds now (so a taken port is an error at startup) and serves in the background.
pub async fn serve(addr: SocketAddr, exporter: Arc<dyn Exporter>) -> Result<()> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("listen for metrics on {addr}"))?;
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
                    let exporter = exporter.clone();
                    async move {
                        let (status, body) = match req.uri().path() {
                            "/metrics" => (StatusCode::OK, exporter.render()),
                            "/health" | "/healthz" => {
                                if exporter.healthy() {
                                    (StatusCode::OK, "ok\n".to_string())
                                } else {
                                    (
                                        StatusCode::SERVICE_UNAVAILABLE,
                                        "not streaming\n".to_string(),
                                    )
                                }
                            }
                            _ => (StatusCode::NOT_FOUND, "not found\n".to_string()),
                        };
                        Response::builder()
                            .status(status)
                            .header("content-type", "text/plain; version=0.0.4")
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

    #[test]
    fn renders_all_metrics() {
        let s = StatsSnapshot {
            flushed_lsn: walrelay_protocol::Lsn(100),
            server_wal_end: walrelay_protocol::Lsn(150),
            timeline: 2,
            connected: true,
            ..Default::default()
        };
        let text = render(&s);
        assert!(text.contains("walrelay_receive_flushed_lsn 100"), "{text}");
        assert!(text.contains("walrelay_receive_lag_bytes 50"), "{text}");
        assert!(text.contains("walrelay_receive_timeline 2"), "{text}");
        assert!(
            text.contains("# TYPE walrelay_receive_reconnects counter"),
            "{text}"
        );
        assert!(
            text.contains("walrelay_receive_received_bytes_total 0"),
            "{text}"
        );
        assert_eq!(text.matches("# HELP ").count(), 15, "{text}");
        assert!(
            text.contains("walrelay_receive_failover_lost_commits_total 0"),
            "{text}"
        );
        assert!(
            !healthy(&s, Duration::from_secs(10)),
            "no message ever received"
        );
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let fresh = StatsSnapshot {
            last_message_unix_ms: now_ms - 2_000,
            ..s
        };
        assert!(healthy(&fresh, Duration::from_secs(10)));
        let text = render(&fresh);
        let age: u64 = text
            .lines()
            .find_map(|l| l.strip_prefix("walrelay_receive_last_message_age_seconds "))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{text}"));
        assert!((2..10).contains(&age), "{text}");
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
