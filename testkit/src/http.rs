//! Plain HTTP for tests: a GET that reads the whole answer, and a server of one
//! text (a service's `/metrics`) for a scraper to read.

use std::future::Future;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Sends `GET path` to 127.0.0.1:`port` and returns the whole response, status line
/// and headers included. HTTP/1.0, so that the server closes the connection after
/// the answer and sends it without chunks.
pub async fn http_get(port: u16, path: &str) -> anyhow::Result<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    Ok(response)
}

/// The body of an HTTP response, after its headers.
pub fn body(response: &str) -> &str {
    response.split_once("\r\n\r\n").map_or("", |(_, body)| body)
}

/// Answers every request on `listener` with what `text` makes at that moment, as
/// `text/plain`, until the returned task is aborted: a service's `/metrics` in a test.
pub fn serve_text<F, T>(listener: TcpListener, text: F) -> tokio::task::JoinHandle<()>
where
    F: Fn() -> T + Send + Sync + 'static,
    T: Future<Output = String> + Send,
{
    let text = std::sync::Arc::new(text);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let text = std::sync::Arc::clone(&text);
            tokio::spawn(async move {
                let mut head = [0u8; 4096];
                let _ = stream.read(&mut head).await;
                let body = text().await;
                let response = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    })
}
