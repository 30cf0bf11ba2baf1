//! Connections the attacks open by hand: from a chosen loopback address
//! (so that intake sees each client as a distinct address), with a receive
//! buffer as small as a case needs, sending a request's head and then as
//! little of its body as the case wants, and reading what the server did
//! with it.

use std::{
    net::{IpAddr, SocketAddr},
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
};

/// A TCP connection from `from` (any port) to `to`; with `recv_buffer`,
/// the socket's receive buffer is set to it before connecting, so that
/// the window the server may fill stays that small.
pub async fn connect(
    from: IpAddr,
    to: SocketAddr,
    recv_buffer: Option<u32>,
) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    if let Some(bytes) = recv_buffer {
        socket.set_recv_buffer_size(bytes)?;
    }
    socket.bind(SocketAddr::new(from, 0))?;
    socket.connect(to).await
}

/// What the server did with one request by the end of the attack.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    /// No answer, the connection still open: the server holds it.
    Held,
    /// An answer: its status and problem `code`, when it had one.
    Answered(u16, Option<String>),
    /// The connection ended without an answer.
    Closed,
    /// The connection could not be made.
    Refused,
}

impl Outcome {
    /// How the outcome reads in the bench's report.
    pub fn label(&self) -> String {
        match self {
            Outcome::Held => "still held at the end".into(),
            Outcome::Answered(status, Some(code)) => format!("answered {status} {code}"),
            Outcome::Answered(status, None) => format!("answered {status}"),
            Outcome::Closed => "closed without an answer".into(),
            Outcome::Refused => "connection refused".into(),
        }
    }
}

/// The status and problem `code` of an answer, once `buf` holds its whole
/// head and as much of its body as its `Content-Length` says (or 4 KiB of
/// it, which a problem document's code is well within); `None` before.
pub fn answer(buf: &[u8], ended: bool) -> Option<(u16, Option<String>)> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&buf[..end]);
    let status: u16 = head.split_whitespace().nth(1)?.parse().ok()?;
    let length = head.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse::<usize>().ok())?
    });
    let body = &buf[end + 4..];
    let whole = length.map_or(ended, |len| body.len() >= len) || body.len() >= 4096;
    if !whole {
        return None;
    }
    let body = String::from_utf8_lossy(body);
    let code = body.split_once("\"code\":\"").and_then(|(_, rest)| {
        rest.split_once('"')
            .map(|(code, _)| code.to_owned())
            .filter(|_| status >= 400)
    });
    Some((status, code))
}

/// Sends `start` (the request's head and whatever of its body goes at
/// once), then `byte` (more of the body) every `every`, until the server
/// answers or ends the connection, or until `until`. `open` counts the
/// requests under way and neither answered nor ended.
pub async fn trickle(
    from: IpAddr,
    to: SocketAddr,
    start: &[&[u8]],
    byte: &[u8],
    every: Duration,
    until: Instant,
    open: &AtomicUsize,
) -> Outcome {
    let Ok(mut stream) = connect(from, to, None).await else {
        return Outcome::Refused;
    };
    open.fetch_add(1, Ordering::SeqCst);
    let outcome = trickle_on(&mut stream, start, byte, every, until).await;
    open.fetch_sub(1, Ordering::SeqCst);
    outcome
}

async fn trickle_on(
    stream: &mut TcpStream,
    start: &[&[u8]],
    byte: &[u8],
    every: Duration,
    until: Instant,
) -> Outcome {
    let deadline = tokio::time::Instant::from_std(until);
    let send_start = async {
        for piece in start {
            stream.write_all(piece).await?;
        }
        Ok::<_, std::io::Error>(())
    };
    // A server that stops reading holds the request as surely as one that
    // waits for its bytes; a refused write leaves the answer to be read.
    if tokio::time::timeout_at(deadline, send_start).await.is_err() {
        return Outcome::Held;
    }
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let mut next = tokio::time::Instant::now() + every;
    loop {
        tokio::select! {
            read = stream.read(&mut chunk) => match read {
                Ok(0) | Err(_) => {
                    return match answer(&buf, true) {
                        Some((status, code)) => Outcome::Answered(status, code),
                        None => Outcome::Closed,
                    };
                }
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some((status, code)) = answer(&buf, false) {
                        return Outcome::Answered(status, code);
                    }
                }
            },
            () = tokio::time::sleep_until(next) => {
                next += every;
                // A refused write (the server closed its side): what it
                // answered, if anything, is read above. A write the server
                // leaves waiting is held until the end like the rest.
                let _ = tokio::time::timeout_at(deadline, stream.write_all(byte)).await;
            }
            () = tokio::time::sleep_until(deadline) => return Outcome::Held,
        }
    }
}

/// The first answer on `stream` among the bytes that have arrived, read
/// without waiting: its status, or `None` when nothing has come yet.
pub fn status_so_far(stream: &TcpStream) -> Option<u16> {
    let mut buf = [0u8; 4096];
    let mut have = 0;
    while have < buf.len() {
        match stream.try_read(&mut buf[have..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => have += n,
        }
    }
    let head = String::from_utf8_lossy(&buf[..have]);
    head.split_whitespace().nth(1)?.parse().ok()
}
