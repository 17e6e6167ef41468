//! Clients that control every frame of a request, as an attacker's client does: HTTP/2
//! with prior knowledge (`h2`), ending a request with trailers, with an empty DATA
//! frame, or with a reset; and HTTP/1.1 chunked bodies with trailers over a raw socket.

use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How the client ends the request after its headers and body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// The body's DATA frame carries END_STREAM.
    EndStream,
    /// The body's DATA frame does not; an empty DATA frame with END_STREAM follows.
    EmptyData,
    /// The body's DATA frame does not; a trailers HEADERS frame ends the stream.
    Trailers,
    /// The body's DATA frame does not; after this long the client resets the stream
    /// (RST_STREAM CANCEL) and reads no answer.
    ResetAfter(Duration),
}

/// What came back: the status and body, or `None` when the stream was reset or the
/// connection failed (the error is in `error`).
#[derive(Debug, Default)]
pub struct Answer {
    pub status: Option<u16>,
    pub body: String,
    pub error: Option<String>,
}

impl Answer {
    /// The `reason` of a JSON error body ("" when there is none).
    pub fn reason(&self) -> String {
        serde_json::from_str::<serde_json::Value>(&self.body)
            .ok()
            .and_then(|v| v["reason"].as_str().map(str::to_string))
            .unwrap_or_default()
    }
}

/// One HTTP/2 request on its own connection (h2c, prior knowledge) to `127.0.0.1:port`.
pub async fn h2(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    ending: Ending,
) -> Answer {
    let exchange = async {
        let mut request =
            http::Request::builder().method(method).uri(format!("http://127.0.0.1:{port}{path}"));
        for (n, v) in headers {
            request = request.header(*n, *v);
        }
        let request = request.body(()).map_err(|e| e.to_string())?;
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.map_err(|e| e.to_string())?;
        let (client, connection) = h2::client::handshake(tcp).await.map_err(|e| e.to_string())?;
        let driver = tokio::spawn(async move {
            let _ = connection.await;
        });
        let answer = send_h2(client, request, body, ending).await;
        driver.abort();
        answer
    };
    exchange.await.unwrap_or_else(|e| Answer { error: Some(e), ..Answer::default() })
}

async fn send_h2(
    client: h2::client::SendRequest<Bytes>,
    request: http::Request<()>,
    body: &[u8],
    ending: Ending,
) -> Result<Answer, String> {
    let mut client = client.ready().await.map_err(|e| e.to_string())?;
    let (response, mut stream) = client.send_request(request, false).map_err(|e| e.to_string())?;
    stream.send_data(Bytes::copy_from_slice(body), ending == Ending::EndStream).map_err(|e| e.to_string())?;
    match ending {
        Ending::EndStream => {}
        Ending::EmptyData => stream.send_data(Bytes::new(), true).map_err(|e| e.to_string())?,
        Ending::Trailers => {
            let mut trailers = http::HeaderMap::new();
            trailers.insert("x-trailer", http::HeaderValue::from_static("end"));
            stream.send_trailers(trailers).map_err(|e| e.to_string())?;
        }
        Ending::ResetAfter(after) => {
            tokio::time::sleep(after).await;
            stream.send_reset(h2::Reason::CANCEL);
            // Let the frame leave before the connection is dropped.
            tokio::time::sleep(Duration::from_millis(100)).await;
            return Ok(Answer { error: Some("reset by the client".into()), ..Answer::default() });
        }
    }
    tokio::time::timeout(Duration::from_secs(20), async {
        let response = response.await.map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let mut body = response.into_body();
        let mut bytes = Vec::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.map_err(|e| e.to_string())?;
            let _ = body.flow_control().release_capacity(chunk.len());
            bytes.extend_from_slice(&chunk);
        }
        Ok(Answer { status: Some(status), body: String::from_utf8_lossy(&bytes).into_owned(), error: None })
    })
    .await
    .map_err(|_| "no answer within 20 s".to_string())?
}

/// One HTTP/1.1 request with a chunked body followed by trailers, on a raw socket.
pub async fn http1_chunked_with_trailers(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Answer {
    let mut request = head(port, method, path, headers, "transfer-encoding: chunked");
    request.extend_from_slice(format!("{:x}\r\n", body.len()).as_bytes());
    request.extend_from_slice(body);
    request.extend_from_slice(b"\r\n0\r\nx-trailer: end\r\n\r\n");
    http1_exchange(port, &request).await
}

/// One HTTP/1.1 request written byte for byte as given (the path is not parsed or
/// normalised by any client library), with a `content-length` body.
pub async fn http1(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Answer {
    let mut request = head(port, method, path, headers, &format!("content-length: {}", body.len()));
    request.extend_from_slice(body);
    http1_exchange(port, &request).await
}

/// The request head; `host` is Envoy's address unless `headers` name one.
fn head(port: u16, method: &str, path: &str, headers: &[(&str, &str)], framing: &str) -> Vec<u8> {
    let host = match headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
        true => String::new(),
        false => format!("host: 127.0.0.1:{port}\r\n"),
    };
    let mut head = format!("{method} {path} HTTP/1.1\r\n{host}connection: close\r\n{framing}\r\n");
    for (n, v) in headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    head.push_str("\r\n");
    head.into_bytes()
}

async fn http1_exchange(port: u16, request: &[u8]) -> Answer {
    let exchange = async {
        let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.map_err(|e| e.to_string())?;
        tcp.write_all(request).await.map_err(|e| e.to_string())?;
        let mut raw = Vec::new();
        tokio::time::timeout(Duration::from_secs(20), tcp.read_to_end(&mut raw))
            .await
            .map_err(|_| "no answer within 20 s".to_string())?
            .map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&raw).into_owned();
        let status = text.split(' ').nth(1).and_then(|s| s.parse().ok());
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let chunked = head.to_ascii_lowercase().contains("transfer-encoding: chunked");
        let body = if chunked { dechunk(body) } else { body.to_string() };
        Ok::<_, String>(Answer { status, body, error: None })
    };
    exchange.await.unwrap_or_else(|e| Answer { error: Some(e), ..Answer::default() })
}

/// The payload of a chunked body (the text as is when it is not chunked).
fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    loop {
        let Some((size, after)) = rest.split_once("\r\n") else { return body.to_string() };
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else { return body.to_string() };
        if n == 0 {
            return out;
        }
        let Some(chunk) = after.get(..n) else { return body.to_string() };
        out.push_str(chunk);
        rest = after.get(n + 2..).unwrap_or_default();
    }
}
