//! Loopback stand-ins for the network: a relay in front of one server or
//! several (a proxy, a round-robin load balancer) that a test can cut, hold
//! or slow, and fake storage servers that misbehave on purpose.
//!
//! Our own rather than a crate: it is a short copy loop over tokio, and the
//! switches (cut, hold, throttle, counts) are what the tests need.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::Notify,
};

/// What a test can switch on a running [`Relay`].
struct Switches {
    backends: Vec<String>,
    next: AtomicUsize,
    /// New connections are refused (accepted and dropped).
    down: AtomicBool,
    /// The client's bytes are no longer passed on.
    held: AtomicBool,
    cut: Notify,
    /// Bytes per second each connection may carry each way; 0 = unbounded.
    rate: AtomicU64,
    /// Connections handed to each backend.
    served: Vec<AtomicU64>,
    /// Bytes passed on from clients to backends.
    forwarded: AtomicU64,
    /// Bytes passed back from backends to clients.
    returned: AtomicU64,
}

/// A loopback TCP relay: each new connection goes to the next backend in
/// turn (skipping backends that refuse it, as a load balancer's health
/// check would). With one backend it is a proxy. A test can cut every
/// connection, hold the clients' bytes, or slow the connections.
pub struct Relay {
    /// `http://127.0.0.1:<port>`.
    pub addr: String,
    switches: Arc<Switches>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    /// A proxy in front of one server (`http://host:port` or `host:port`).
    pub async fn to(upstream: &str) -> Relay {
        Self::balancing(&[upstream]).await
    }

    /// A round-robin balancer over `backends` (`http://host:port` or
    /// `host:port`).
    pub async fn balancing(backends: &[&str]) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = format!("http://{}", listener.local_addr().unwrap());
        let switches = Arc::new(Switches {
            backends: backends
                .iter()
                .map(|b| b.trim_start_matches("http://").to_owned())
                .collect(),
            next: AtomicUsize::new(0),
            down: AtomicBool::new(false),
            held: AtomicBool::new(false),
            cut: Notify::new(),
            rate: AtomicU64::new(0),
            served: backends.iter().map(|_| AtomicU64::new(0)).collect(),
            forwarded: AtomicU64::new(0),
            returned: AtomicU64::new(0),
        });
        let s = switches.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if s.down.load(Ordering::SeqCst) {
                    continue;
                }
                tokio::spawn(relay(client, s.clone()));
            }
        });
        Relay {
            addr,
            switches,
            task,
        }
    }

    /// The absolute URL of `path` through the relay.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.addr)
    }

    /// Drops every connection and refuses new ones.
    pub fn cut(&self) {
        self.switches.down.store(true, Ordering::SeqCst);
        self.switches.cut.notify_waiters();
    }

    /// Stops passing the clients' bytes on (the servers take no more, the
    /// connections stay open), until [`Relay::cut`] or [`Relay::restore`].
    pub fn hold(&self) {
        self.switches.held.store(true, Ordering::SeqCst);
    }

    /// Lets connections through again, unheld.
    pub fn restore(&self) {
        self.switches.down.store(false, Ordering::SeqCst);
        self.switches.held.store(false, Ordering::SeqCst);
    }

    /// Holds each connection to `bytes_per_sec` each way (0: unbounded).
    pub fn throttle(&self, bytes_per_sec: u64) {
        self.switches.rate.store(bytes_per_sec, Ordering::SeqCst);
    }

    /// Connections handed to each backend so far.
    pub fn served(&self) -> Vec<u64> {
        self.switches
            .served
            .iter()
            .map(|n| n.load(Ordering::SeqCst))
            .collect()
    }

    /// Bytes passed on from clients to the backends so far.
    pub fn forwarded(&self) -> u64 {
        self.switches.forwarded.load(Ordering::SeqCst)
    }

    /// Bytes carried either way so far (requests and answers, headers
    /// included): what the clients and the backends moved through it.
    pub fn carried(&self) -> u64 {
        self.forwarded() + self.switches.returned.load(Ordering::SeqCst)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
        self.switches.cut.notify_waiters();
    }
}

async fn relay(mut client: TcpStream, s: Arc<Switches>) {
    let n = s.backends.len();
    let first = s.next.fetch_add(1, Ordering::SeqCst);
    let mut server = None;
    for i in 0..n {
        let at = (first + i) % n;
        let connect = TcpStream::connect(&s.backends[at]);
        if let Ok(Ok(stream)) = tokio::time::timeout(Duration::from_secs(1), connect).await {
            s.served[at].fetch_add(1, Ordering::SeqCst);
            server = Some(stream);
            break;
        }
    }
    let Some(mut server) = server else {
        return;
    };
    let (mut cr, mut cw) = client.split();
    let (mut sr, mut sw) = server.split();
    let cut = s.cut.notified();
    tokio::pin!(cut);
    cut.as_mut().enable();
    // A cut between the accept and here still ends this connection.
    if s.down.load(Ordering::SeqCst) {
        return;
    }
    tokio::select! {
        _ = async { tokio::join!(pump(&mut cr, &mut sw, &s, true), pump(&mut sr, &mut cw, &s, false)) } => {}
        () = cut => {}
    }
}

/// Copies one direction until its end, at most the rate a second, then
/// half-closes the other side. Each direction counts what it passes on;
/// the clients' direction (`upstream`) stops while held.
async fn pump(
    from: &mut (impl AsyncReadExt + Unpin),
    to: &mut (impl AsyncWriteExt + Unpin),
    s: &Switches,
    upstream: bool,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if upstream && s.held.load(Ordering::SeqCst) {
            // Until the cut: the server gets no more bytes.
            std::future::pending::<()>().await;
        }
        let limit = s.rate.load(Ordering::SeqCst);
        // A slow link carries a tenth of its rate every 100 ms.
        let chunk = if limit == 0 {
            buf.len()
        } else {
            (limit as usize / 10).clamp(1, buf.len())
        };
        let n = match from.read(&mut buf[..chunk]).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let count = if upstream { &s.forwarded } else { &s.returned };
        count.fetch_add(n as u64, Ordering::SeqCst);
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
        if limit != 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let _ = to.shutdown().await;
}

/// A server on 127.0.0.1 standing in for storage that misbehaves; it stops
/// when dropped.
pub struct FakeStorage {
    pub addr: String,
    task: tokio::task::JoinHandle<()>,
}

impl FakeStorage {
    /// Serves `accept` on a fresh loopback listener until dropped.
    async fn serve<F>(accept: impl FnOnce(tokio::net::TcpListener) -> F) -> FakeStorage
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(accept(listener));
        FakeStorage { addr, task }
    }

    /// Accepts connections and never answers: storage (or anything) that
    /// has stopped responding without closing its sockets.
    pub async fn blackhole() -> FakeStorage {
        Self::serve(|listener| async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        })
        .await
    }

    /// Reads each request to its last byte and then closes the connection
    /// without answering: storage that died after taking a request, as a
    /// killed S3 server does.
    pub async fn hangup() -> FakeStorage {
        use tokio::io::AsyncReadExt;
        Self::serve(|listener| async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut got = Vec::new();
                    let mut buf = vec![0u8; 64 * 1024];
                    let (head_end, body_len) = loop {
                        let Ok(n) = socket.read(&mut buf).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        got.extend_from_slice(&buf[..n]);
                        if let Some(at) = memchr::memmem::find(&got, b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&got[..at]).to_ascii_lowercase();
                            let len = head
                                .lines()
                                .find_map(|l| l.strip_prefix("content-length:"))
                                .and_then(|v| v.trim().parse::<usize>().ok())
                                .unwrap_or(0);
                            break (at + 4, len);
                        }
                    };
                    let mut left = (head_end + body_len).saturating_sub(got.len());
                    while left > 0 {
                        match socket.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => left = left.saturating_sub(n),
                        }
                    }
                    // Dropped with nothing unread: a clean close, no answer.
                });
            }
        })
        .await
    }
}

impl Drop for FakeStorage {
    fn drop(&mut self) {
        self.task.abort();
    }
}
