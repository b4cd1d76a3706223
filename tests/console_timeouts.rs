//! The console's HTTP server does not wait forever: a client that does not finish its
//! request head within the header-read timeout, or that stalls mid-body past the idle
//! timeout, has its connection closed. Real server, raw TCP on 127.0.0.1; the server's
//! timeouts are set short and the test waits for the close itself (bounded at 10 s).

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn console(header_read_ms: u64, idle_ms: u64) -> (TestServer, SocketAddr) {
    let t = TestServer::start_with(|c| {
        c.console_listen = Some("127.0.0.1:0".parse().unwrap());
        c.limits.http_header_read_ms = header_read_ms;
        c.limits.http_idle_ms = idle_ms;
    })
    .await;
    let addr = t.running().console_addr().expect("the console is on");
    (t, addr)
}

/// Reads until the server closes the connection; what it sent before closing.
async fn until_closed(conn: &mut TcpStream) -> String {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut buf))
            .await
            .expect("the server closes the connection within 10 s")
            .unwrap_or(0);
        if n == 0 {
            return String::from_utf8_lossy(&seen).into_owned();
        }
        seen.extend_from_slice(&buf[..n]);
    }
}

#[tokio::test]
async fn a_request_head_not_finished_within_the_header_read_timeout_closes_the_connection() {
    let (_t, addr) = console(300, 60_000).await;
    let mut conn = TcpStream::connect(addr).await.expect("connect");
    conn.write_all(format!("GET / HTTP/1.1\r\nHost: {addr}\r\nX-Slow: ").as_bytes())
        .await
        .expect("send part of a head");
    let got = until_closed(&mut conn).await;
    assert!(!got.contains("200 OK"), "no page for half a request: {got}");
}

#[tokio::test]
async fn a_body_that_stalls_past_the_idle_timeout_closes_the_connection() {
    let (_t, addr) = console(60_000, 300).await;
    let mut conn = TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "POST /login HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/x-www-form-urlencoded\r\n\
         Content-Length: 100\r\n\r\ntoken=abc"
    );
    conn.write_all(head.as_bytes())
        .await
        .expect("send a head and part of a body");
    until_closed(&mut conn).await;
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_and_a_prompt_request_is_answered() {
    let (_t, addr) = console(300, 60_000).await;
    let mut conn = TcpStream::connect(addr).await.expect("connect");
    conn.write_all(format!("GET /static/console.css HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .expect("send a request");
    // Answered, then (keep-alive, no next request) closed.
    let got = until_closed(&mut conn).await;
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
}
