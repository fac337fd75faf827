//! `--metrics-addr`: Prometheus metrics and a health check for a running receiver (and, for
//! `walrelay serve`, its downstreams).

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
use std::fmt::Write as _;
use tokio::net::TcpListener;
use tracing::{info, warn};

use walrelay_relay::{DownstreamSnapshot, RelayStats};
use walrelay_walreceiver::{ReceiverStats, StatsSnapshot};

/// Renders the Prometheus text exposition of a snapshot.
pub fn render(s: &StatsSnapshot) -> String {
    /// How a value is exposed: a gauge can go down, a counter only up (and gets `_total`).
    enum Kind {
        Gauge(u64),
        Counter(u64),
    }
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
    let mut reg = Registry::with_prefix("walrelay_receive");
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
    let mut out = String::new();
    let _ = encode(&mut out, &reg);
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
) -> Result<()> {
    serve_pages(addr, move || {
        let snap = stats.snapshot();
        (render(&snap), healthy(&snap, status_interval))
    })
    .await
}

/// `walrelay serve`'s endpoint: the upstream stream's metrics, then one series per downstream.
pub async fn serve_relay(
    addr: SocketAddr,
    stats: Arc<ReceiverStats>,
    relay: Arc<RelayStats>,
    status_interval: Duration,
) -> Result<()> {
    serve_pages(addr, move || {
        let snap = stats.snapshot();
        let mut text = render(&snap);
        text.push_str(&render_downstreams(&relay.snapshot()));
        (text, healthy(&snap, status_interval))
    })
    .await
}

/// The downstreams of a relay in the Prometheus text format: a gauge per position and lag, each
/// labelled with the downstream's pid, application_name and client address, and its state as a
/// separate series (`state="streaming"` = 1).
pub fn render_downstreams(downstreams: &[DownstreamSnapshot]) -> String {
    /// The labels naming one downstream.
    fn labels(d: &DownstreamSnapshot) -> String {
        let name = d
            .application_name
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n");
        format!(
            "pid=\"{}\",application_name=\"{name}\",client_addr=\"{}\"",
            d.pid,
            d.client_addr.ip()
        )
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP walrelay_serve_downstreams Downstream connections\n# TYPE walrelay_serve_downstreams gauge\nwalrelay_serve_downstreams {}",
        downstreams.len()
    );
    type Value = fn(&DownstreamSnapshot) -> String;
    let series: [(&str, &str, Value); 8] = [
        ("sent_lsn", "End of the WAL sent (bytes)", |d| {
            d.sent_lsn.0.to_string()
        }),
        (
            "write_lsn",
            "Write position the downstream reported (bytes)",
            |d| d.write_lsn.0.to_string(),
        ),
        (
            "flush_lsn",
            "Flush position the downstream reported (bytes)",
            |d| d.flush_lsn.0.to_string(),
        ),
        (
            "apply_lsn",
            "Replay position the downstream reported (bytes)",
            |d| d.apply_lsn.0.to_string(),
        ),
        (
            "lag_bytes",
            "Servable WAL the downstream has not confirmed as flushed (bytes)",
            |d| d.lag_bytes.to_string(),
        ),
        (
            "lag_seconds",
            "Age of the oldest WAL the downstream has not confirmed as flushed",
            |d| format!("{:.3}", d.lag.as_secs_f64()),
        ),
        ("timeline", "Timeline streamed", |d| {
            d.timeline.map_or(0, |t| t.0).to_string()
        }),
        (
            "state",
            "1 for the state the downstream is in (label state)",
            |_| "1".to_string(),
        ),
    ];
    for (name, help, value) in series {
        let _ = writeln!(
            out,
            "# HELP walrelay_serve_downstream_{name} {help}\n# TYPE walrelay_serve_downstream_{name} gauge"
        );
        for d in downstreams {
            let extra = if name == "state" {
                format!(",state=\"{}\"", d.state.as_str())
            } else {
                String::new()
            };
            let _ = writeln!(
                out,
                "walrelay_serve_downstream_{name}{{{}{extra}}} {}",
                labels(d),
                value(d)
            );
        }
    }
    out
}

/// Serves `/metrics` and `/health` from `page` (text, healthy) in the background.
async fn serve_pages(
    addr: SocketAddr,
    page: impl Fn() -> (String, bool) + Send + Sync + 'static,
) -> Result<()> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("listen for metrics on {addr}"))?;
    info!(%addr, "serving metrics on /metrics and health on /health");
    let page = Arc::new(page);
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
            let page = page.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let (text, healthy) = page();
                    async move {
                        let (status, body) = match req.uri().path() {
                            "/metrics" => (StatusCode::OK, text),
                            "/health" | "/healthz" => {
                                if healthy {
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
