//! TLS where it is configured: with `[tls]` the staff console is served over TLS with
//! `Secure`, `__Host-` cookies, and the built-in connectors reach a TLS server when
//! given its CA (`--ca-file`). Certificates are made with rcgen for `localhost`.
mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use common::*;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use sendlater::clock::ManualClock;
use sendlater::config::{Accounts, Role, ServerConfig, TlsConfig, TokenConfig};
use sendlater::pb;
use sendlater::pb::scheduler_client::SchedulerClient;
use sendlater::server::RunningServer;
use tonic::transport::Channel;

/// A certificate for `localhost` written to `dir` (cert.pem, key.pem); its DER for
/// clients to trust.
struct Cert {
    tls: TlsConfig,
    pem: String,
    der: rustls::pki_types::CertificateDer<'static>,
}

fn make_cert(dir: &std::path::Path) -> Cert {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let pem = cert.cert.pem();
    std::fs::write(dir.join("cert.pem"), &pem).unwrap();
    std::fs::write(dir.join("key.pem"), cert.signing_key.serialize_pem()).unwrap();
    Cert {
        tls: TlsConfig {
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
        },
        pem,
        der: cert.cert.der().clone(),
    }
}

/// A server with `[tls]` and its console on 127.0.0.1:0, on the manual clock.
async fn tls_server(
    dir: &std::path::Path,
    cert: &Cert,
    tokens: Vec<TokenConfig>,
) -> (RunningServer, ManualClock) {
    let clock = ManualClock::new(T0);
    let mut config = ServerConfig::new("127.0.0.1:0".parse().unwrap(), dir.join("tls.db"));
    config.clock = Arc::new(clock.clone());
    config.dispatch.drain_grace_ms = 0;
    config.tls = Some(cert.tls.clone());
    config.console_listen = Some("127.0.0.1:0".parse().unwrap());
    config.tokens = tokens;
    let server = sendlater::server::start(config)
        .await
        .expect("TLS server starts");
    (server, clock)
}

/// A gRPC client of the TLS server, trusting `cert`.
async fn grpc_client(server: &RunningServer, cert: &Cert) -> SchedulerClient<Channel> {
    let ch = tonic::transport::Endpoint::from_shared(format!(
        "https://localhost:{}",
        server.local_addr().port()
    ))
    .unwrap()
    .tls_config(
        tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(&cert.pem)),
    )
    .unwrap()
    .connect()
    .await
    .expect("TLS handshake");
    SchedulerClient::new(ch)
}

/// One HTTPS request to the console at `https://localhost:PORT` (trusting `cert`):
/// status, headers, body.
async fn https(
    console: SocketAddr,
    cert: &Cert,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    form: Option<&str>,
) -> (u16, hyper::HeaderMap, String) {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der.clone()).unwrap();
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .build();
    let client: hyper_util::client::legacy::Client<_, Full<Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(connector);
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(format!("https://localhost:{}{path}", console.port()));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    if form.is_some() {
        req = req.header("content-type", "application/x-www-form-urlencoded");
    }
    let req = req
        .body(Full::new(Bytes::from(form.unwrap_or("").to_owned())))
        .unwrap();
    let resp = client.request(req).await.expect("an HTTPS answer");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

fn set_cookie(headers: &hyper::HeaderMap) -> String {
    headers
        .get("set-cookie")
        .expect("a cookie")
        .to_str()
        .unwrap()
        .to_owned()
}

/// The `name=value` pair of a Set-Cookie value.
fn pair(set_cookie: &str) -> String {
    set_cookie.split(';').next().unwrap().trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tls_the_console_is_served_over_tls_with_a_secure_host_cookie() {
    let dir = tempfile::tempdir().unwrap();
    let cert = make_cert(dir.path());
    let (server, _clock) = tls_server(dir.path(), &cert, Vec::new()).await;
    let console = server.console_addr().expect("the console is on");

    // Plain HTTP on the console's port gets no page.
    let plain = http_exchange(console, "GET", "/", None, None).await;
    assert!(plain.is_err(), "plain HTTP answered: {}", plain.unwrap());

    let (status, headers, _) = https(console, &cert, "GET", "/", &[], None).await;
    assert_eq!(status, 303);
    let cookie = set_cookie(&headers);
    assert!(cookie.starts_with("__Host-sendlater_session="), "{cookie}");
    let attrs: Vec<&str> = cookie.split(';').skip(1).map(str::trim).collect();
    for want in ["Path=/", "HttpOnly", "SameSite=Strict", "Secure"] {
        assert!(attrs.contains(&want), "{want} missing: {cookie}");
    }
    assert!(
        !cookie.to_ascii_lowercase().contains("domain="),
        "a __Host- cookie has no Domain: {cookie}"
    );
    let session = pair(&cookie);
    let (status, _, body) = https(
        console,
        &cert,
        "GET",
        "/accounts/acme/deferred",
        &[("cookie", &session)],
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("Deferred sending"), "{body}");
    // The same id under the plain name (which an http:// page of the same host could
    // have set) is not a session there.
    let plain_name = session.replace("__Host-", "");
    let (status, headers, _) = https(
        console,
        &cert,
        "GET",
        "/accounts/acme/deferred",
        &[("cookie", &plain_name)],
        None,
    )
    .await;
    assert_eq!(status, 303);
    assert_ne!(pair(&set_cookie(&headers)), session);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_over_tls_takes_the_https_origin_and_sets_secure_cookies() {
    let dir = tempfile::tempdir().unwrap();
    let cert = make_cert(dir.path());
    let tokens = vec![TokenConfig {
        token: "operator-token-0001".into(),
        role: Role::Admin,
        accounts: Accounts::All,
    }];
    let (server, _clock) = tls_server(dir.path(), &cert, tokens).await;
    let console = server.console_addr().expect("the console is on");
    let (status, headers, body) = https(console, &cert, "GET", "/login", &[], None).await;
    assert_eq!(status, 200, "{body}");
    let login_cookie = set_cookie(&headers);
    assert!(login_cookie.starts_with("__Host-"), "{login_cookie}");
    assert!(
        login_cookie.split(';').any(|a| a.trim() == "Secure"),
        "{login_cookie}"
    );
    let at = body
        .find("name=\"login_csrf\" value=\"")
        .expect("login_csrf")
        + 25;
    let form = format!(
        "token=operator-token-0001&login_csrf={}",
        &body[at..at + 32]
    );
    let origin = format!("https://localhost:{}", console.port());
    // The http:// origin of the same host and port is another origin.
    let http_origin = origin.replace("https://", "http://");
    let (status, headers, _) = https(
        console,
        &cert,
        "POST",
        "/login",
        &[("cookie", &pair(&login_cookie)), ("origin", &http_origin)],
        Some(&form),
    )
    .await;
    assert_eq!(status, 403);
    assert!(headers.get("set-cookie").is_none());
    let (status, headers, _) = https(
        console,
        &cert,
        "POST",
        "/login",
        &[("cookie", &pair(&login_cookie)), ("origin", &origin)],
        Some(&form),
    )
    .await;
    assert_eq!(status, 303);
    let session = set_cookie(&headers);
    assert!(
        session.starts_with("__Host-sendlater_session="),
        "{session}"
    );
    assert!(
        session.split(';').any(|a| a.trim() == "Secure"),
        "{session}"
    );
    let (status, _, body) = https(
        console,
        &cert,
        "GET",
        "/operations",
        &[("cookie", &pair(&session))],
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    server.shutdown().await.unwrap();
}

/// A webhook on 127.0.0.1:0 that answers 200 with an id and reports each request.
async fn webhook() -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<Bytes>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let tx = tx.clone();
            let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                let tx = tx.clone();
                async move {
                    let body = req.into_body().collect().await.unwrap().to_bytes();
                    let _ = tx.send(body);
                    Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from(
                        r#"{"id":"chat-msg-1"}"#,
                    ))))
                }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
            );
        }
    });
    (addr, rx)
}

/// A child process killed (by its own pid) when dropped, also when the test fails.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chat_connector_reaches_a_tls_server_given_its_ca_file() {
    let dir = tempfile::tempdir().unwrap();
    let cert = make_cert(dir.path());
    let (server, _clock) = tls_server(dir.path(), &cert, Vec::new()).await;
    let mut client = grpc_client(&server, &cert).await;
    let item = client
        .schedule_message(chat_reply("acme", "T1", T0))
        .await
        .expect("schedule over TLS")
        .into_inner();
    let (hook, mut hits) = webhook().await;
    let _connector = Child(
        std::process::Command::new(env!("CARGO_BIN_EXE_sendlater"))
            .args(["connector", "chat", "--server"])
            .arg(format!("https://localhost:{}", server.local_addr().port()))
            .arg("--ca-file")
            .arg(&cert.tls.cert)
            .arg("--webhook")
            .arg(format!("http://{hook}/hook"))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("the connector starts"),
    );
    let body = tokio::time::timeout(std::time::Duration::from_secs(10), hits.recv())
        .await
        .expect("the webhook is called within 10 s")
        .expect("webhook running");
    assert!(
        String::from_utf8_lossy(&body).contains("Hi! Answer inside."),
        "{body:?}"
    );
    wait_state(&client, "acme", &item.item_id, pb::State::Sent).await;
    server.shutdown().await.unwrap();
}
