//! `/healthz`, `/readyz` and `/metrics` over plain HTTP/1.1.
//!
//! Deliberately tiny: GET only, one response per connection. Probes and scrapers
//! need nothing more, and it keeps an HTTP stack out of the dependency tree.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::admin;
use crate::metrics::Metrics;

const MAX_REQUEST_HEAD: usize = 8 * 1024;

/// A probe or scraper that has not been answered by then is dropped.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves the health and metrics endpoints on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    pool: PgPool,
    shutdown: CancellationToken,
) {
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    tracing::debug!(%error, "health endpoint accept failed");
                    continue;
                }
            },
            () = shutdown.cancelled() => return,
        };
        let metrics = Arc::clone(&metrics);
        let pool = pool.clone();
        tokio::spawn(async move {
            let answered =
                tokio::time::timeout(ANSWER_TIMEOUT, answer(stream, &metrics, &pool)).await;
            if let Ok(Err(error)) = answered {
                tracing::debug!(%error, "health endpoint connection failed");
            }
        });
    }
}

/// 200 naming the RabbitMQ node the relay publishes to, or 503 saying what it waits
/// for. The node's URL has its password redacted. A broker that blocks publishing
/// (a resource alarm) is named but leaves the relay ready: restarting or moving the
/// relay would not clear the broker's alarm.
fn readiness(metrics: &Metrics) -> (&'static str, &'static str, String) {
    let node = metrics.broker_node();
    let database_ok = metrics.database_ok();
    if let (Some(node), true) = (&node, database_ok) {
        let blocked = metrics
            .broker_blocked()
            .map(|reason| format!("; the broker blocks publishing: {reason}"))
            .unwrap_or_default();
        return (
            "200 OK",
            "text/plain",
            format!("ready: RabbitMQ node {node}{blocked}\n"),
        );
    }
    let broker = node.map_or_else(
        || "RabbitMQ not connected".to_owned(),
        |node| format!("RabbitMQ node {node}"),
    );
    let database = if database_ok {
        "PostgreSQL ok"
    } else {
        "PostgreSQL not reachable"
    };
    (
        "503 Service Unavailable",
        "text/plain",
        format!("not ready: {broker}; {database}\n"),
    )
}

async fn answer(mut stream: TcpStream, metrics: &Metrics, pool: &PgPool) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_REQUEST_HEAD {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let request_line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let request_line = String::from_utf8_lossy(request_line);
    let mut parts = request_line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");

    let (status, content_type, body) = match (method, path) {
        ("GET", "/healthz") => ("200 OK", "text/plain", "ok\n".to_owned()),
        ("GET", "/readyz") => readiness(metrics),
        ("GET", "/metrics") => {
            let backlog = admin::backlog(pool).await.ok();
            (
                "200 OK",
                "text/plain; version=0.0.4",
                metrics.render(backlog),
            )
        }
        ("GET", _) => ("404 Not Found", "text/plain", "not found\n".to_owned()),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "only GET\n".to_owned(),
        ),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}
