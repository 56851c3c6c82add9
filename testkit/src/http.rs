//! Plain HTTP for tests: a GET that reads the whole answer, and a server of one
//! text (a service's `/metrics`) for a scraper to read.

use std::future::Future;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How long one GET may take, connect to last byte. Without a bound, a GET to a port
/// nobody listens on yet can hang for ever: the kernel may pick that very port as the
/// GET's own source port and connect the socket to itself, which then reads back its
/// own request and never sees the end of an answer.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// Sends `GET path` to 127.0.0.1:`port` and returns the whole response, status line
/// and headers included. HTTP/1.0, so that the server closes the connection after
/// the answer and sends it without chunks. Fails after [`HTTP_TIMEOUT`], and on an
/// answer that is not HTTP (a socket connected to itself echoes the request).
pub async fn http_get(port: u16, path: &str) -> anyhow::Result<String> {
    http_request(port, "GET", path, &[], "").await
}

/// Sends `POST path` with a form body (`application/x-www-form-urlencoded`) and the
/// extra `headers`, as [`http_get`] sends a GET.
pub async fn http_post_form(
    port: u16,
    path: &str,
    headers: &[(&str, &str)],
    form: &str,
) -> anyhow::Result<String> {
    let mut all = vec![("Content-Type", "application/x-www-form-urlencoded")];
    all.extend_from_slice(headers);
    http_request(port, "POST", path, &all, form).await
}

/// One HTTP/1.0 exchange: `method path` with `headers` and `body`.
pub async fn http_request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> anyhow::Result<String> {
    let mut request = format!("{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    if method != "GET" {
        request.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    request.push_str("\r\n");
    request.push_str(body);
    let exchange = async {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
        stream.write_all(request.as_bytes()).await?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await?;
        anyhow::Ok(response)
    };
    let response = tokio::time::timeout(HTTP_TIMEOUT, exchange)
        .await
        .map_err(|_| {
            anyhow::anyhow!("{method} {path} on port {port}: no answer in {HTTP_TIMEOUT:?}")
        })??;
    anyhow::ensure!(
        response.starts_with("HTTP/"),
        "{method} {path} on port {port}: not an HTTP answer: {:?}",
        response.chars().take(80).collect::<String>()
    );
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A peer that sends back what it is sent and never closes, as a socket
    /// connected to itself does.
    async fn echo_for_ever(listener: TcpListener) {
        let (mut stream, _) = listener.accept().await.expect("accepted");
        let mut buffer = [0u8; 1024];
        while let Ok(read) = stream.read(&mut buffer).await {
            if read == 0 || stream.write_all(&buffer[..read]).await.is_err() {
                break;
            }
        }
        std::future::pending::<()>().await;
    }

    #[tokio::test]
    async fn a_peer_that_echoes_and_never_closes_is_an_error_not_a_hang() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bound");
        let port = listener.local_addr().expect("address").port();
        tokio::spawn(echo_for_ever(listener));
        let answered = tokio::time::timeout(HTTP_TIMEOUT * 2, http_get(port, "/x")).await;
        let error = answered
            .expect("the GET ended")
            .expect_err("the GET failed");
        assert!(error.to_string().contains("no answer in"), "{error}");
    }

    #[tokio::test]
    async fn an_answer_that_is_not_http_is_refused() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bound");
        let port = listener.local_addr().expect("address").port();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.expect("accepted");
            let mut head = [0u8; 1024];
            let _ = stream.read(&mut head).await;
            let _ = stream.write_all(b"GET /x HTTP/1.0\r\n\r\n").await;
        });
        let error = http_get(port, "/x").await.expect_err("refused");
        assert!(error.to_string().contains("not an HTTP answer"), "{error}");
    }

    #[tokio::test]
    async fn a_server_of_text_answers_a_get() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bound");
        let port = listener.local_addr().expect("address").port();
        let server = serve_text(listener, || async { "hello".to_owned() });
        let response = http_get(port, "/metrics").await.expect("answered");
        server.abort();
        assert_eq!(body(&response), "hello");
    }
}
