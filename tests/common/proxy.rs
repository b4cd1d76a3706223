//! A TCP proxy between sendlater and PostgreSQL that a test can cut: every connection at
//! once ([`Proxy::cut_all`]), or around the next `COMMIT` a client sends
//! ([`Proxy::arm`]): before it reaches the server (the transaction cannot have
//! committed), or after the server answered it (it committed, but the client never
//! learns it). New connections are relayed as usual after a cut, unless the proxy
//! refuses them ([`Proxy::refuse`]).
//!
//! It reads the PostgreSQL protocol only as far as to find `COMMIT\0` (the simple query
//! `COMMIT` going to the server, the command tag `COMMIT` or `ROLLBACK` coming back).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Where an armed cut falls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitCut {
    /// The `COMMIT` is dropped and every connection cut: nothing committed.
    BeforeCommit,
    /// The `COMMIT` reaches the server; once its answer comes back (dropped), every
    /// connection is cut: it committed, unknown to the client.
    AfterCommit,
}

struct Ctl {
    /// Bumped to cut every connection open now.
    cut: watch::Sender<u64>,
    /// The cut armed for the next `COMMIT`, and whether it stays armed after firing.
    armed: Mutex<Option<(CommitCut, bool)>>,
    /// Armed cuts that fired.
    fired: watch::Sender<u64>,
    connections: AtomicU64,
    /// While set, new connections are closed at once (the server looks down).
    refusing: std::sync::atomic::AtomicBool,
    /// Connections numbered below this relay nothing (frozen); 0: none is.
    frozen_below: watch::Sender<u64>,
}

impl Ctl {
    fn cut_all(&self) {
        self.cut.send_modify(|n| *n += 1);
    }

    /// Takes the armed cut, if any (it stays when persistent).
    fn take(&self) -> Option<CommitCut> {
        let mut armed = self.armed.lock().unwrap();
        let (mode, persistent) = (*armed)?;
        if !persistent {
            *armed = None;
        }
        Some(mode)
    }

    fn fire(&self) {
        self.cut_all();
        self.fired.send_modify(|n| *n += 1);
    }
}

/// A running proxy; stops with the test's runtime.
pub struct Proxy {
    addr: SocketAddr,
    ctl: Arc<Ctl>,
}

impl Proxy {
    /// Listens on 127.0.0.1 (a free port) and relays every connection to `target`.
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let addr = listener.local_addr().expect("the proxy's address");
        let ctl = Arc::new(Ctl {
            cut: watch::channel(0).0,
            armed: Mutex::new(None),
            fired: watch::channel(0).0,
            connections: AtomicU64::new(0),
            refusing: std::sync::atomic::AtomicBool::new(false),
            frozen_below: watch::channel(0).0,
        });
        let c = ctl.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if c.refusing.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let Ok(server) = TcpStream::connect(target).await else {
                    continue;
                };
                let id = c.connections.fetch_add(1, Ordering::SeqCst);
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                tokio::spawn(relay(client, server, c.clone(), id));
            }
        });
        Proxy { addr, ctl }
    }

    /// The proxy's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `url` (a `postgres://` URL) with the proxy's address in place of its host and port.
    pub fn url_through(&self, url: &str) -> String {
        let mut u = url::Url::parse(url).expect("a database URL");
        u.set_host(Some(&self.addr.ip().to_string())).expect("host");
        u.set_port(Some(self.addr.port())).expect("port");
        u.to_string()
    }

    /// Cuts every connection open now.
    pub fn cut_all(&self) {
        self.ctl.cut_all();
    }

    /// Arms a cut at the next `COMMIT` any client sends (`persistent`: at every one,
    /// until [`Proxy::disarm`]).
    pub fn arm(&self, mode: CommitCut, persistent: bool) {
        *self.ctl.armed.lock().unwrap() = Some((mode, persistent));
    }

    /// No cut at the next `COMMIT`.
    pub fn disarm(&self) {
        *self.ctl.armed.lock().unwrap() = None;
    }

    /// While `refuse` holds, every new connection is closed at once, as if the server
    /// were down (connections already open go on).
    pub fn refuse(&self, refuse: bool) {
        self.ctl.refusing.store(refuse, Ordering::SeqCst);
    }

    /// Freezes every connection open now: they stay open but relay nothing (a server,
    /// or a network, that stops answering) until [`Proxy::thaw`]. New connections
    /// relay as usual.
    pub fn freeze_open(&self) {
        let n = self.ctl.connections.load(Ordering::SeqCst);
        self.ctl.frozen_below.send_replace(n);
    }

    /// Frozen connections relay again (what they held goes on).
    pub fn thaw(&self) {
        self.ctl.frozen_below.send_replace(0);
    }

    /// How many armed cuts fired so far.
    pub fn fired(&self) -> u64 {
        *self.ctl.fired.borrow()
    }

    /// Waits (bounded, 30 s) until at least `n` armed cuts fired.
    pub async fn wait_fired(&self, n: u64) {
        let mut rx = self.ctl.fired.subscribe();
        tokio::time::timeout(std::time::Duration::from_secs(30), rx.wait_for(|f| *f >= n))
            .await
            .unwrap_or_else(|_| panic!("the armed cut #{n} did not fire within 30 s"))
            .expect("the proxy is running");
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.ctl.connections.load(Ordering::Relaxed)
    }
}

/// Whether `needle` ends in `chunk`, maybe starting in `tail` (the end of what came
/// before): a needle wholly in `tail` was seen with the chunk before.
fn contains(tail: &[u8], chunk: &[u8], needle: &[u8]) -> bool {
    let mut joined = Vec::with_capacity(tail.len() + chunk.len());
    joined.extend_from_slice(tail);
    joined.extend_from_slice(chunk);
    joined
        .windows(needle.len())
        .enumerate()
        .any(|(at, w)| at + needle.len() > tail.len() && w == needle)
}

/// The last bytes of `tail` + `chunk` a needle could start in.
fn keep_tail(tail: &mut Vec<u8>, chunk: &[u8]) {
    tail.extend_from_slice(chunk);
    let keep = 16;
    if tail.len() > keep {
        tail.drain(..tail.len() - keep);
    }
}

/// Waits while connection `id` is frozen.
async fn unfrozen(frozen: &mut watch::Receiver<u64>, id: u64) {
    let _ = frozen.wait_for(|below| id >= *below).await;
}

async fn relay(client: TcpStream, server: TcpStream, ctl: Arc<Ctl>, id: u64) {
    let mut cut = ctl.cut.subscribe();
    cut.borrow_and_update();
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    // Set when a COMMIT went through under `AfterCommit`: answers are dropped until
    // the COMMIT's own, then everything is cut.
    let swallow = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let up = {
        let (ctl, swallow) = (ctl.clone(), swallow.clone());
        let mut frozen = ctl.frozen_below.subscribe();
        async move {
            let mut buf = vec![0u8; 64 * 1024];
            let mut tail = Vec::new();
            loop {
                let n = match cr.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                let chunk = &buf[..n];
                if contains(&tail, chunk, b"COMMIT\0") {
                    match ctl.take() {
                        Some(CommitCut::BeforeCommit) => {
                            ctl.fire();
                            return;
                        }
                        Some(CommitCut::AfterCommit) => {
                            swallow.store(true, Ordering::SeqCst);
                        }
                        None => {}
                    }
                }
                keep_tail(&mut tail, chunk);
                unfrozen(&mut frozen, id).await;
                if sw.write_all(chunk).await.is_err() {
                    return;
                }
            }
        }
    };
    let down = {
        let ctl = ctl.clone();
        let mut frozen = ctl.frozen_below.subscribe();
        async move {
            let mut buf = vec![0u8; 64 * 1024];
            let mut tail = Vec::new();
            loop {
                let n = match sr.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                let chunk = &buf[..n];
                if swallow.load(Ordering::SeqCst) {
                    if contains(&tail, chunk, b"COMMIT\0") || contains(&tail, chunk, b"ROLLBACK\0")
                    {
                        ctl.fire();
                        return;
                    }
                    keep_tail(&mut tail, chunk);
                    continue;
                }
                keep_tail(&mut tail, chunk);
                unfrozen(&mut frozen, id).await;
                if cw.write_all(chunk).await.is_err() {
                    return;
                }
            }
        }
    };
    // The first to end (or a cut) ends both directions: dropping the halves closes
    // both sockets.
    tokio::select! {
        _ = up => {}
        _ = down => {}
        _ = cut.changed() => {}
    }
}
