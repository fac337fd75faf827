//! `--metrics-addr`: Prometheus metrics and a health check for a running receiver.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

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
use walrelay_walreceiver::{ReceiverStats, StatsSnapshot};

/// Renders the Prometheus text exposition of a snapshot.
pub fn render(s: &StatsSnapshot) -> String {
    let mut reg = Registry::with_prefix("walrelay_receive");
    let gauge = |v: u64| {
        let g: Gauge<i64> = Gauge::default();
        g.set(i64::try_from(v).unwrap_or(i64::MAX));
        g
    };
    let counter = |v: u64| {
        let c: Counter = Counter::default();
        c.inc_by(v);
        c
    };
    reg.register(
        "received_lsn",
        "End of the WAL received (bytes)",
        gauge(s.received_lsn.0),
    );
    reg.register(
        "written_lsn",
        "End of the WAL written to files (bytes)",
        gauge(s.written_lsn.0),
    );
    reg.register(
        "flushed_lsn",
        "End of the durable WAL (bytes)",
        gauge(s.flushed_lsn.0),
    );
    reg.register(
        "reported_flush_lsn",
        "Flush position last reported to the server (bytes)",
        gauge(s.reported_flush_lsn.0),
    );
    reg.register(
        "server_wal_end_lsn",
        "The server's end of WAL as last seen (bytes)",
        gauge(s.server_wal_end.0),
    );
    reg.register(
        "lag_bytes",
        "Server end of WAL minus durable WAL",
        gauge(s.server_wal_end.0.saturating_sub(s.flushed_lsn.0)),
    );
    reg.register(
        "received_bytes",
        "WAL bytes received",
        counter(s.bytes_received),
    );
    reg.register(
        "reconnects",
        "Reconnections after transient failures",
        counter(s.reconnects),
    );
    reg.register(
        "segments_completed",
        "Segments completed",
        counter(s.segments_completed),
    );
    reg.register("timeline", "Current timeline", gauge(u64::from(s.timeline)));
    reg.register(
        "connected",
        "1 while streaming",
        gauge(u64::from(s.connected)),
    );
    let age = if s.last_message_unix_ms == 0 {
        0
    } else {
        now_ms().saturating_sub(s.last_message_unix_ms) / 1000
    };
    reg.register(
        "last_message_age_seconds",
        "Seconds since the last message from the server",
        gauge(age),
    );
    let mut out = String::new();
    let _ = encode(&mut out, &reg);
    out
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Healthy while streaming and hearing from the server within a few status intervals.
pub fn healthy(s: &StatsSnapshot, status_interval: Duration) -> bool {
    let limit = status_interval.max(Duration::from_secs(10)).as_millis() as u64 * 3;
    s.connected && now_ms().saturating_sub(s.last_message_unix_ms) <= limit
}

/// Binds now (so a taken port is an error at startup) and serves in the background.
pub async fn serve(
    addr: SocketAddr,
    stats: Arc<ReceiverStats>,
    status_interval: Duration,
) -> Result<()> {
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
            let stats = stats.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let snap = stats.snapshot();
                    async move {
                        let (status, body) = match req.uri().path() {
                            "/metrics" => (StatusCode::OK, render(&snap)),
                            "/health" | "/healthz" => {
                                if healthy(&snap, status_interval) {
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
            !healthy(&s, Duration::from_secs(10)),
            "no message ever received"
        );
    }
}
