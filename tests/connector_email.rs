//! The email connector end to end: a real sendlater server, the connector library
//! running against it, and a real SMTP server (`tests/support/smtp_sink.py`, aiosmtpd)
//! on 127.0.0.1 that records every message it gets.
mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::connector::ConnectorTask;
use common::*;
use sendlater::connector::{run_email, EmailConfig, RunnerConfig};
use sendlater::pb;

/// The SMTP sink process; killed (and reaped) when dropped, also on a failed test.
struct SmtpSink {
    child: Child,
    port: u16,
    out: tempfile::TempDir,
}

impl SmtpSink {
    /// Starts the sink; the first `fail_first` messages get `fail_code`.
    fn start(fail_first: u32, fail_code: u16) -> SmtpSink {
        let out = tempfile::tempdir().expect("temp dir");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/smtp_sink.py");
        let mut child = Command::new("python3")
            .arg(script)
            .args(["--port", "0", "--out"])
            .arg(out.path())
            .args(["--fail-first", &fail_first.to_string()])
            .args(["--fail-code", &fail_code.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 runs (pip install aiosmtpd)");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("the sink prints its port");
        let port = line.trim().parse().unwrap_or_else(|_| {
            let _ = child.kill();
            panic!("the sink printed {line:?}, not a port (is aiosmtpd installed?)")
        });
        SmtpSink { child, port, out }
    }

    fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    /// Waits (bounded) until the sink has recorded `n` messages; returns them in order.
    async fn messages(&self, n: usize) -> Vec<Received> {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let mut files: Vec<PathBuf> = std::fs::read_dir(self.out.path())
                .expect("read out dir")
                .map(|e| e.expect("dir entry").path())
                .filter(|p| p.extension().is_some_and(|e| e == "json"))
                .collect();
            if files.len() >= n {
                files.sort();
                return files.iter().map(|f| Received::load(f)).collect();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {n} messages, have {}",
                files.len()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One message as the SMTP server saw it.
#[derive(Debug)]
struct Received {
    mail_from: String,
    rcpt_tos: Vec<String>,
    data: String,
    answer: String,
}

impl Received {
    fn load(path: &Path) -> Received {
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(path).expect("read message")).expect("json");
        let s = |k: &str| v[k].as_str().expect("string field").to_owned();
        Received {
            mail_from: s("mail_from"),
            rcpt_tos: v["rcpt_tos"]
                .as_array()
                .expect("rcpt_tos")
                .iter()
                .map(|r| r.as_str().expect("address").to_owned())
                .collect(),
            data: s("data"),
            answer: s("answer"),
        }
    }

    /// The header block, unfolded, as (name, value) pairs.
    fn headers(&self) -> Vec<(String, String)> {
        let head = self.data.split("\r\n\r\n").next().expect("header block");
        let mut out: Vec<(String, String)> = Vec::new();
        for line in head.split("\r\n") {
            if line.starts_with([' ', '\t']) {
                let last = out.last_mut().expect("a folded line follows a header");
                last.1.push(' ');
                last.1.push_str(line.trim());
            } else if let Some((k, v)) = line.split_once(':') {
                out.push((k.to_owned(), v.trim().to_owned()));
            }
        }
        out
    }

    fn header(&self, name: &str) -> Option<String> {
        self.headers()
            .into_iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }
}

/// The email connector running as a task.
fn start_connector(server: &str, smtp: &str) -> ConnectorTask {
    let mut runner = RunnerConfig::new(server);
    runner.connector_id = "email-test".into();
    runner.max_in_flight = 4;
    let mut email = EmailConfig::new(smtp);
    email.default_from = Some("Acme Help <help@acme.example>".into());
    email.timeout = Duration::from_secs(5);
    ConnectorTask::spawn(|shutdown| run_email(runner, email, shutdown))
}

/// A reply with cc, bcc, threading, both bodies and an attachment link.
async fn schedule_email(t: &TestServer) -> pb::ScheduledItem {
    let mut req = email_reply("acme", "T1", T0 + 60_000);
    if let Some(pb::schedule_request::Content::Email(e)) = &mut req.content {
        e.cc = vec!["manager@example.com".into()];
        e.bcc = vec!["audit@acme.example".into()];
        e.in_reply_to = "<question-1@mail.example.com>".into();
        e.html_body = "<p>Hello, here is the <b>answer</b>.</p>".into();
        e.attachments = vec![pb::Attachment {
            filename: "guide.pdf".into(),
            content_type: "application/pdf".into(),
            url: "https://files.example.com/guide.pdf".into(),
            size_bytes: 20_480,
        }];
    }
    t.client
        .clone()
        .schedule_message(req)
        .await
        .expect("scheduled")
        .into_inner()
}

#[tokio::test]
async fn a_due_email_reaches_the_smtp_server_with_its_headers_and_becomes_sent() {
    let sink = SmtpSink::start(0, 451);
    let mut t = TestServer::start().await;
    let connector = start_connector(&t.url(), &sink.url());
    let item = schedule_email(&t).await;

    t.advance(Duration::from_secs(60));
    let msgs = sink.messages(1).await;
    let m = &msgs[0];
    let id = &item.item_id;
    let message_id = format!("<{id}@sendlater.acme.example>");

    assert_eq!(m.answer, "250 OK");
    assert_eq!(m.mail_from, "help@acme.example");
    let mut rcpt = m.rcpt_tos.clone();
    rcpt.sort();
    assert_eq!(
        rcpt,
        [
            "audit@acme.example",
            "client@example.com",
            "manager@example.com"
        ]
    );
    assert_eq!(
        m.header("From").as_deref(),
        Some("\"Acme Help\" <help@acme.example>")
    );
    assert_eq!(m.header("To").as_deref(), Some("client@example.com"));
    assert_eq!(m.header("Cc").as_deref(), Some("manager@example.com"));
    assert_eq!(m.header("Subject").as_deref(), Some("Re: your question"));
    assert_eq!(m.header("Message-ID"), Some(message_id.clone()));
    assert_eq!(
        m.header("In-Reply-To").as_deref(),
        Some("<question-1@mail.example.com>")
    );
    assert_eq!(
        m.header("References").as_deref(),
        Some("<question-1@mail.example.com>")
    );
    assert_eq!(m.header("X-Sendlater-Item"), Some(id.clone()));
    assert_eq!(m.header("Bcc"), None, "no Bcc header: {}", m.data);
    assert!(!m.data.contains("audit@acme.example"), "{}", m.data);
    assert!(
        m.header("Content-Type")
            .is_some_and(|c| c.starts_with("multipart/alternative")),
        "{}",
        m.data
    );
    assert!(m.data.contains("Hello, here is the answer."), "{}", m.data);
    assert!(
        m.data
            .contains("guide.pdf (20.5 KB): https://files.example.com/guide.pdf"),
        "{}",
        m.data
    );
    assert!(
        m.data
            .contains("<a href=3D\"https://files.example.com/guide.pdf\">guide.pdf</a>")
            || m.data
                .contains("<a href=\"https://files.example.com/guide.pdf\">guide.pdf</a>"),
        "{}",
        m.data
    );

    let sent = wait_item(&t, id, "SENT", |i| i.state == pb::State::Sent as i32).await;
    assert_eq!(sent.provider_message_id, message_id);

    connector.stop().await;
    t.stop().await;
}

#[tokio::test]
async fn a_451_is_retried_with_the_same_message_id_and_then_sent() {
    let sink = SmtpSink::start(1, 451);
    let mut t = TestServer::start_with(|c| c.dispatch.retry_base_ms = 20).await;
    let connector = start_connector(&t.url(), &sink.url());
    let item = schedule_email(&t).await;

    t.advance(Duration::from_secs(60));
    let retrying = wait_item(&t, &item.item_id, "PENDING after the 451", |i| {
        i.state == pb::State::Pending as i32 && i.attempts == 1
    })
    .await;
    assert!(
        retrying.last_error.contains("451"),
        "last_error: {:?}",
        retrying.last_error
    );

    // The retry is due after the (20 ms based) backoff on the server's clock.
    t.advance(Duration::from_secs(1));
    let sent = wait_item(&t, &item.item_id, "SENT", |i| {
        i.state == pb::State::Sent as i32
    })
    .await;
    assert_eq!(sent.attempts, 2);

    let msgs = sink.messages(2).await;
    assert!(msgs[0].answer.starts_with("451"), "{:?}", msgs[0].answer);
    assert_eq!(msgs[1].answer, "250 OK");
    assert_eq!(msgs[0].header("Message-ID"), msgs[1].header("Message-ID"));
    assert_eq!(
        msgs[1].header("Message-ID"),
        Some(sent.provider_message_id.clone())
    );

    connector.stop().await;
    t.stop().await;
}

#[tokio::test]
async fn a_550_fails_the_item_at_once() {
    let sink = SmtpSink::start(1, 550);
    let mut t = TestServer::start_with(|c| c.dispatch.retry_base_ms = 20).await;
    let connector = start_connector(&t.url(), &sink.url());
    let item = schedule_email(&t).await;

    t.advance(Duration::from_secs(60));
    let failed = wait_item(&t, &item.item_id, "FAILED", |i| {
        i.state == pb::State::Failed as i32
    })
    .await;
    assert_eq!(failed.attempts, 1);
    assert!(
        failed.last_error.contains("550"),
        "last_error: {:?}",
        failed.last_error
    );
    assert_eq!(sink.messages(1).await.len(), 1);
    // ...and the sink still has one message.
    t.assert_not_retried(&item.item_id).await;
    assert_eq!(sink.messages(1).await.len(), 1);

    connector.stop().await;
    t.stop().await;
}

#[tokio::test]
async fn an_unreachable_smtp_server_is_a_transient_failure() {
    // A port that was just free: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut t = TestServer::start().await;
    let connector = start_connector(&t.url(), &format!("smtp://127.0.0.1:{port}"));
    let item = schedule_email(&t).await;

    t.advance(Duration::from_secs(60));
    let retrying = wait_item(
        &t,
        &item.item_id,
        "PENDING after a refused connection",
        |i| i.state == pb::State::Pending as i32 && i.attempts == 1,
    )
    .await;
    assert!(
        retrying.last_error.starts_with("smtp:"),
        "last_error: {:?}",
        retrying.last_error
    );

    connector.stop().await;
    t.stop().await;
}
