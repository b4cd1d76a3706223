//! The console's live updates (Server-Sent Events) are bounded: a session holds at most
//! 4 streams and the console at most its global cap (429 beyond), `after` beyond the
//! newest event is clamped to it, and a stream whose session logged out ends at its next
//! wake instead of carrying on. Real server, raw HTTP/1.1 on 127.0.0.1.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An SSE response being read: its status and the connection.
struct Sse {
    status: u16,
    conn: TcpStream,
    seen: String,
}

impl Sse {
    /// GETs `path` with the session `sid` and reads the response head.
    async fn open(addr: SocketAddr, path: &str, sid: &str) -> Sse {
        let mut conn = TcpStream::connect(addr).await.expect("connect");
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nCookie: sendlater_session={sid}\r\n\
             Accept: text/event-stream\r\nConnection: close\r\n\r\n"
        );
        conn.write_all(req.as_bytes()).await.expect("send");
        let mut raw = Vec::new();
        let mut buf = [0u8; 4096];
        let head_end = loop {
            if let Some(at) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                break at;
            }
            let n = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut buf))
                .await
                .expect("a response head within 10 s")
                .expect("read");
            assert!(n > 0, "closed before the head");
            raw.extend_from_slice(&buf[..n]);
        };
        let head = String::from_utf8_lossy(&raw[..head_end]).into_owned();
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("a status");
        Sse {
            status,
            conn,
            seen: String::from_utf8_lossy(&raw[head_end + 4..]).into_owned(),
        }
    }

    /// Reads until `what` has been seen (true) or the server closed the stream (false);
    /// gives up after 10 s.
    async fn until(&mut self, what: &str) -> bool {
        let mut buf = [0u8; 4096];
        loop {
            if self.seen.contains(what) {
                return true;
            }
            let n = tokio::time::timeout(Duration::from_secs(10), self.conn.read(&mut buf))
                .await
                .unwrap_or_else(|_| {
                    panic!("neither {what:?} nor the end within 10 s: {}", self.seen)
                })
                .expect("read");
            if n == 0 {
                return false;
            }
            self.seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    }
}

async fn console(
    tweak: impl FnOnce(&mut sendlater::config::ServerConfig),
) -> (TestServer, SocketAddr) {
    let t = TestServer::start_with(|c| {
        c.console_listen = Some("127.0.0.1:0".parse().unwrap());
        tweak(c);
    })
    .await;
    let addr = t.running().console_addr().expect("the console is on");
    (t, addr)
}

/// A fresh session of the open console (made on the first visit).
async fn session(addr: SocketAddr) -> String {
    let r = http_exchange(addr, "GET", "/", None, None)
        .await
        .expect("GET /");
    r.header("set-cookie")
        .expect("a session cookie")
        .split(';')
        .next()
        .unwrap()
        .split_once('=')
        .unwrap()
        .1
        .to_owned()
}

const EVENTS: &str = "/accounts/acme/events";

#[tokio::test]
async fn a_session_holds_at_most_4_event_streams_and_the_console_at_most_its_cap() {
    let (_t, addr) = console(|c| c.limits.max_streams = 5).await;
    let one = session(addr).await;
    let mut open = Vec::new();
    for _ in 0..4 {
        let s = Sse::open(addr, EVENTS, &one).await;
        assert_eq!(s.status, 200);
        open.push(s);
    }
    assert_eq!(
        Sse::open(addr, EVENTS, &one).await.status,
        429,
        "a fifth of one session"
    );
    let two = session(addr).await;
    let s = Sse::open(addr, EVENTS, &two).await;
    assert_eq!(s.status, 200, "another session has its own places");
    open.push(s);
    assert_eq!(
        Sse::open(addr, EVENTS, &two).await.status,
        429,
        "the console's cap of 5"
    );
}

#[tokio::test]
async fn an_after_beyond_the_newest_event_is_clamped_to_it() {
    let (t, addr) = console(|_| {}).await;
    let sid = session(addr).await;
    let mut s = Sse::open(addr, &format!("{EVENTS}?after=1000000"), &sid).await;
    assert_eq!(s.status, 200);
    let item = t.schedule(email_reply("acme", "T1", T0 + 3_600_000)).await;
    assert!(
        s.until(&item.item_id).await,
        "the change arrives: {}",
        s.seen
    );
}

#[tokio::test]
async fn a_stream_whose_session_logged_out_ends_at_its_next_wake() {
    let (t, addr) = console(|_| {}).await;
    let sid = session(addr).await;
    let page = http_exchange(addr, "GET", "/accounts/acme/deferred", Some(&sid), None)
        .await
        .expect("the deferred page");
    let at = page
        .body
        .find("name=\"csrf\" value=\"")
        .expect("a csrf field")
        + 19;
    let csrf = page.body[at..at + 32].to_owned();
    let mut s = Sse::open(addr, EVENTS, &sid).await;
    assert_eq!(s.status, 200);
    let first = t.schedule(email_reply("acme", "T1", T0 + 3_600_000)).await;
    assert!(s.until(&first.item_id).await, "live while logged in");

    let out = http_exchange(
        addr,
        "POST",
        "/logout",
        Some(&sid),
        Some(&format!("csrf={csrf}")),
    )
    .await
    .expect("logout");
    assert_eq!(out.status, 303, "{out}");
    let second = t.schedule(email_reply("acme", "T2", T0 + 3_600_000)).await;
    assert!(
        !s.until(&second.item_id).await,
        "the stream ended instead of carrying the next change: {}",
        s.seen
    );
}
