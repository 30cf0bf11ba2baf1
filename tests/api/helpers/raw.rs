//! HTTP/1.1 by hand over one TCP connection, for what a client library
//! hides: what the server does with the connection after an answer.

use std::time::Duration;

use serde_json::Value;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpStream, tcp::OwnedReadHalf},
    sync::oneshot,
};

/// One answer as it came over the wire.
#[derive(Debug)]
pub struct RawAnswer {
    /// Its status code.
    pub status: u16,
    /// Its headers, names in lower case.
    pub headers: Vec<(String, String)>,
    /// Its body (read by `Content-Length`).
    pub body: Vec<u8>,
}

impl RawAnswer {
    /// The first value of header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Whether the answer says the server closes the connection after it.
    pub fn says_close(&self) -> bool {
        self.header("connection")
            .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")))
    }

    /// Asserts a problem+json answer of `status` and `code`; its body.
    pub fn assert_problem(&self, status: u16, code: &str) -> Value {
        let body: Value = serde_json::from_slice(&self.body).unwrap_or(Value::Null);
        assert_eq!(self.status, status, "{body}");
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json")
        );
        assert_eq!(body["code"], code, "{body}");
        body
    }
}

/// The read side of a connection, with what it has read past the last
/// answer.
pub struct RawReader {
    half: OwnedReadHalf,
    buf: Vec<u8>,
}

impl RawReader {
    /// Reads one answer (up to 15 s); `None` when the connection ends (or
    /// is reset) before a whole answer came.
    pub async fn answer(&mut self) -> Option<RawAnswer> {
        tokio::time::timeout(Duration::from_secs(15), self.read_answer())
            .await
            .expect("an answer or a closed connection within 15 s")
    }

    async fn read_answer(&mut self) -> Option<RawAnswer> {
        let head_end = loop {
            if let Some(at) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break at;
            }
            self.fill().await?;
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let len: usize = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .map_or(0, |(_, v)| v.parse().expect("a numeric Content-Length"));
        self.buf.drain(..head_end + 4);
        while self.buf.len() < len {
            self.fill().await?;
        }
        let body = self.buf.drain(..len).collect();
        Some(RawAnswer {
            status,
            headers,
            body,
        })
    }

    async fn fill(&mut self) -> Option<()> {
        let mut chunk = [0u8; 16 * 1024];
        match self.half.read(&mut chunk).await {
            Ok(0) | Err(_) => None,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Some(())
            }
        }
    }

    /// Whether the server closes (or resets) the connection within `bound`
    /// without sending anything more.
    pub async fn closed_within(&mut self, bound: Duration) -> bool {
        let mut chunk = [0u8; 1024];
        matches!(
            tokio::time::timeout(bound, self.half.read(&mut chunk)).await,
            Ok(Ok(0) | Err(_))
        ) && self.buf.is_empty()
    }
}

/// What became of the connection after an early answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum After {
    /// The answer kept it open, and the next request on it was answered.
    KeptOpen,
    /// The answer said `Connection: close`, and the server closed it.
    Closed,
}

/// When the body of a request is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyAt {
    /// Right after the head, while the answer is awaited.
    WithHead,
    /// Only once the answer has arrived (a client slow to send it).
    AfterAnswer,
}

/// Sends a request's `head` (ending with its blank line) and `body` on a
/// new connection to `addr`, and reads the answer. Then goes on as a
/// keep-alive client would, and asserts that it can: when the answer says
/// `Connection: close`, the server must close the connection; otherwise
/// the next request on it (`GET /healthz`) must be answered.
pub async fn keep_alive_exchange(
    addr: &str,
    head: &str,
    body: Vec<u8>,
    at: BodyAt,
) -> (RawAnswer, After) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (half, mut writer) = stream.into_split();
    writer.write_all(head.as_bytes()).await.unwrap();
    let (answered, on_answer) = oneshot::channel::<()>();
    // The body goes in its own task, so that a server that stops reading
    // cannot stop the test from reading its answer.
    let sending = tokio::spawn(async move {
        if at == BodyAt::AfterAnswer {
            let _ = on_answer.await;
        }
        let sent = writer.write_all(&body).await.is_ok();
        (writer, sent)
    });
    let mut reader = RawReader {
        half,
        buf: Vec::new(),
    };
    let answer = reader
        .answer()
        .await
        .expect("an answer before the connection ends");
    let _ = answered.send(());
    let (mut writer, sent) = sending.await.unwrap();
    if answer.says_close() {
        assert!(
            reader.closed_within(Duration::from_secs(10)).await,
            "the server closes the connection it said it would"
        );
        return (answer, After::Closed);
    }
    assert!(sent, "the body was taken whole on a connection kept open");
    writer
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: intake\r\n\r\n")
        .await
        .expect("the kept connection takes the next request");
    let next = reader
        .answer()
        .await
        .expect("the next request on a kept connection is answered");
    assert_eq!(next.status, 200, "{next:?}");
    (answer, After::KeptOpen)
}
