//! A "drop the answer" proxy for fault injection: it forwards HTTP/1.1 requests to an upstream
//! and passes the answers back, except for the requests a rule picks: those reach the upstream
//! (and are carried out), then the proxy closes the client's connection without a byte of the
//! answer. From the client's side the outcome is unknown, exactly as when a network drops the
//! answer after the server acted.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Which requests lose their answer: `(method, path) -> bool`, asked for every request.
pub type DropRule = Arc<dyn Fn(&str, &str) -> bool + Send + Sync>;

/// A running proxy.
#[derive(Clone)]
pub struct DropProxy {
    /// Where it listens.
    pub addr: SocketAddr,
    dropped: Arc<Mutex<Vec<(String, String)>>>,
}

impl DropProxy {
    /// Starts a proxy in front of `upstream`; must be called inside a tokio runtime.
    pub fn start(upstream: SocketAddr, rule: DropRule) -> DropProxy {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("proxy addr");
        let dropped = Arc::new(Mutex::new(Vec::new()));
        let proxy = DropProxy {
            addr,
            dropped: dropped.clone(),
        };
        tokio::spawn(async move {
            let listener = TcpListener::from_std(listener).expect("tokio listener");
            while let Ok((client, _)) = listener.accept().await {
                let rule = rule.clone();
                let dropped = dropped.clone();
                tokio::spawn(async move {
                    let _ = serve(client, upstream, rule, dropped).await;
                });
            }
        });
        proxy
    }

    /// `http://addr` + the path part of `upstream_base` (so the proxy stands in for it).
    pub fn base_for(&self, upstream_base: &str) -> String {
        let path = url::Url::parse(upstream_base)
            .map(|url| url.path().trim_end_matches('/').to_owned())
            .unwrap_or_default();
        format!("http://{}{path}", self.addr)
    }

    /// The (method, path) of every request whose answer was dropped.
    pub fn dropped(&self) -> Vec<(String, String)> {
        self.dropped.lock().unwrap().clone()
    }
}

/// One client connection: requests one after another (keep-alive), each on a fresh upstream
/// connection that the proxy asks to close (`Connection: close`), so the answer ends at EOF.
async fn serve(
    mut client: TcpStream,
    upstream: SocketAddr,
    rule: DropRule,
    dropped: Arc<Mutex<Vec<(String, String)>>>,
) -> std::io::Result<()> {
    let mut buffer = Vec::new();
    loop {
        let Some((head_end, content_length)) = read_head(&mut client, &mut buffer).await? else {
            return Ok(());
        };
        while buffer.len() < head_end + content_length {
            let mut chunk = [0u8; 8192];
            let n = client.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buffer.extend_from_slice(&chunk[..n]);
        }
        let request: Vec<u8> = buffer.drain(..head_end + content_length).collect();
        let head = String::from_utf8_lossy(&request[..head_end]).into_owned();
        let mut request_line = head.lines().next().unwrap_or_default().split(' ');
        let method = request_line.next().unwrap_or_default().to_owned();
        let path = request_line
            .next()
            .unwrap_or_default()
            .split('?')
            .next()
            .unwrap_or_default()
            .to_owned();
        // The request line, then `Connection: close`, then the rest as sent.
        let first_line_end = head.find("\r\n").unwrap_or(0) + 2;
        let mut forwarded = Vec::with_capacity(request.len() + 20);
        forwarded.extend_from_slice(&request[..first_line_end]);
        forwarded.extend_from_slice(b"Connection: close\r\n");
        forwarded.extend_from_slice(&request[first_line_end..]);
        let mut server = TcpStream::connect(upstream).await?;
        server.write_all(&forwarded).await?;
        let mut answer = Vec::new();
        server.read_to_end(&mut answer).await?;
        if rule(&method, &path) {
            dropped.lock().unwrap().push((method, path));
            // Carried out upstream; the client gets nothing and sees the connection close.
            return Ok(());
        }
        client.write_all(&answer).await?;
    }
}

/// Reads until the end of a request head; returns its length (with the blank line) and the
/// body's `Content-Length`, or `None` at EOF.
async fn read_head(
    client: &mut TcpStream,
    buffer: &mut Vec<u8>,
) -> std::io::Result<Option<(usize, usize)>> {
    loop {
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buffer[..end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|line| line.strip_prefix("content-length:"))
                .and_then(|value| value.trim().parse().ok())
                .unwrap_or(0);
            return Ok(Some((end + 4, length)));
        }
        let mut chunk = [0u8; 8192];
        let n = client.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buffer.extend_from_slice(&chunk[..n]);
    }
}

/// A TCP forwarder that can be switched off, as a database that went down looks to its clients:
/// while off, every open connection is cut and new ones are closed at once; switched on, it
/// forwards again.
pub struct Switch {
    /// Where it listens.
    pub addr: SocketAddr,
    up: Arc<std::sync::atomic::AtomicBool>,
    connections: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Switch {
    /// Starts a switch in front of `upstream`, on; must be called inside a tokio runtime.
    pub async fn start(upstream: SocketAddr) -> Switch {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind switch");
        let addr = listener.local_addr().expect("switch addr");
        let up = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let connections = Arc::new(Mutex::new(Vec::<tokio::task::AbortHandle>::new()));
        let (accept_up, accept_connections) = (up.clone(), connections.clone());
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !accept_up.load(std::sync::atomic::Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let task = tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                let mut open = accept_connections.lock().unwrap();
                open.retain(|handle| !handle.is_finished());
                open.push(task.abort_handle());
            }
        });
        Switch {
            addr,
            up,
            connections,
        }
    }

    /// Cuts every connection and refuses new ones until [`Switch::on`].
    pub fn off(&self) {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        for connection in self.connections.lock().unwrap().drain(..) {
            connection.abort();
        }
    }

    /// Forwards again.
    pub fn on(&self) {
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}
