//! The staff console over plain HTTP (no browser): sessions, CSRF, the security
//! headers, account scoping and escaping, against a real server on ephemeral ports.
//! The browser scenarios are in `console_browser.rs`.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use common::*;
use sendlater::config::{Accounts, Role, TokenConfig};
use sendlater::pb;

fn session_of(resp: &HttpResponse) -> String {
    let c = resp.header("set-cookie").expect("a session cookie");
    assert!(
        c.contains("HttpOnly") && c.contains("SameSite=Strict"),
        "{c}"
    );
    c.split(';')
        .next()
        .unwrap()
        .split_once('=')
        .unwrap()
        .1
        .to_owned()
}

fn csrf_of(page: &str) -> String {
    let at = page.find("name=\"csrf\" value=\"").expect("a csrf field") + 19;
    page[at..at + 32].to_owned()
}

async fn console_server(tokens: Vec<TokenConfig>) -> (TestServer, SocketAddr) {
    let t = TestServer::start_with(|c| {
        c.console_listen = Some("127.0.0.1:0".parse().unwrap());
        c.tokens = tokens;
    })
    .await;
    let addr = t.running().console_addr().expect("the console is on");
    (t, addr)
}

/// A gRPC request with the operator's token.
fn operator<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert(
        "authorization",
        "Bearer operator-token-0001".parse().unwrap(),
    );
    r
}

/// One HTTP exchange with the console.
async fn call(
    addr: SocketAddr,
    method: &'static str,
    path: String,
    cookie: Option<String>,
    form: Option<String>,
) -> HttpResponse {
    http_exchange(addr, method, &path, cookie.as_deref(), form.as_deref())
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

/// A session of the open console (made on the first visit), and the page at `path`.
async fn open_page(addr: SocketAddr, path: &str) -> (String, HttpResponse) {
    let sid = session_of(&call(addr, "GET", "/".into(), None, None).await);
    let page = call(addr, "GET", path.into(), Some(sid.clone()), None).await;
    (sid, page)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_without_the_sessions_csrf_token_changes_nothing() {
    let (t, addr) = console_server(Vec::new()).await;
    let item = t.schedule(email_reply("acme", "T1", T0 + 3_600_000)).await;
    // The open console makes a session on the first visit.
    let first = call(addr, "GET", "/accounts/acme/deferred".into(), None, None).await;
    assert_eq!(first.status, 303, "{first}");
    let sid = session_of(&first);
    let page = call(
        addr,
        "GET",
        "/accounts/acme/tickets/T1".into(),
        Some(sid.clone()),
        None,
    )
    .await;
    assert_eq!(page.status, 200);
    let csrf = csrf_of(&page.body);
    let cancel = format!("/accounts/acme/items/{}/cancel", item.item_id);
    for bad in ["", "0123456789abcdef0123456789abcdef", &csrf[..31]] {
        let r = call(
            addr,
            "POST",
            cancel.clone(),
            Some(sid.clone()),
            Some(format!("csrf={bad}")),
        )
        .await;
        assert_eq!(r.status, 403, "csrf {bad:?}: {r}");
    }
    // No session at all: not a change either. The open console sends it to `/` with
    // a fresh session (whose CSRF token is another).
    let r = call(
        addr,
        "POST",
        cancel.clone(),
        None,
        Some(format!("csrf={csrf}")),
    )
    .await;
    assert_eq!((r.status, r.header("location")), (303, Some("/")), "{r}");
    assert_ne!(session_of(&r), sid, "{r}");
    assert_eq!(
        t.get_acme(&item.item_id).await.state,
        pb::State::Pending as i32
    );
    // With the session's token it is cancelled.
    let r = call(
        addr,
        "POST",
        cancel,
        Some(sid),
        Some(format!("csrf={csrf}")),
    )
    .await;
    assert_eq!(r.status, 303, "{r}");
    assert_eq!(
        t.get_acme(&item.item_id).await.state,
        pb::State::Cancelled as i32
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_page_carries_a_strict_content_security_policy_and_escapes_item_text() {
    let (t, addr) = console_server(Vec::new()).await;
    let mut r = email_reply("acme", "T1", T0 + 3_600_000);
    if let Some(pb::schedule_request::Content::Email(e)) = r.content.as_mut() {
        e.subject = "<script>alert('s')</script>".into();
        e.text_body = "<img src=x onerror=alert(1)> & \"quoted\"".into();
    }
    t.schedule(r).await;
    let sid = session_of(&call(addr, "GET", "/".into(), None, None).await);
    for path in [
        "/",
        "/accounts/acme/deferred",
        "/accounts/acme/tickets/T1",
        "/accounts/acme/schedule",
        "/operations",
        "/nope",
    ] {
        let r = call(addr, "GET", path.into(), Some(sid.clone()), None).await;
        let csp = r.header("content-security-policy").unwrap_or_default();
        assert!(
            csp.contains("script-src 'self'") && csp.contains("default-src 'none'"),
            "{path}: {csp}"
        );
        assert!(!csp.contains("unsafe-inline"), "{path}: {csp}");
        assert_eq!(
            r.header("x-content-type-options"),
            Some("nosniff"),
            "{path}"
        );
        assert!(
            !r.body.contains("<script>alert"),
            "{path} shows the payload as markup"
        );
    }
    let ticket = call(
        addr,
        "GET",
        "/accounts/acme/tickets/T1".into(),
        Some(sid),
        None,
    )
    .await;
    assert!(
        ticket
            .body
            .contains("&lt;script&gt;alert('s')&lt;/script&gt;"),
        "{ticket}"
    );
    assert!(
        ticket
            .body
            .contains("&lt;img src=x onerror=alert(1)&gt; &amp; &quot;quoted&quot;"),
        "{ticket}"
    );
    // The only script is our own file.
    assert_eq!(ticket.body.matches("<script").count(), 1);
    assert!(ticket
        .body
        .contains("<script src=\"/static/console.js\" defer></script>"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tokens_a_session_needs_a_login_and_sees_only_its_accounts() {
    let tokens = vec![
        TokenConfig {
            token: "acme-staff-token".into(),
            role: Role::Backend,
            accounts: Accounts::Only(vec!["acme".into()]),
        },
        TokenConfig {
            token: "operator-token-0001".into(),
            role: Role::Admin,
            accounts: Accounts::All,
        },
    ];
    let (t, addr) = console_server(tokens).await;
    let r = call(addr, "GET", "/accounts/acme/deferred".into(), None, None).await;
    assert_eq!(
        (r.status, r.header("location")),
        (303, Some("/login")),
        "{r}"
    );
    assert!(
        r.header("set-cookie").is_none(),
        "no session without a login"
    );
    // The login form ties itself to this browser: a token in the form and in a
    // SameSite=Strict cookie; a post without both (another site's form) is refused.
    let form = call(addr, "GET", "/login".into(), None, None).await;
    assert_eq!(form.status, 200);
    let bound = form.header("set-cookie").expect("a login cookie");
    assert!(
        bound.contains("SameSite=Strict") && bound.contains("HttpOnly"),
        "{bound}"
    );
    let pair = bound.split(';').next().unwrap().to_owned();
    let at = form
        .body
        .find("name=\"login_csrf\" value=\"")
        .expect("a login_csrf field")
        + 25;
    let login_csrf = form.body[at..at + 32].to_owned();
    for (cookie, body) in [
        (
            None,
            format!("token=acme-staff-token&login_csrf={login_csrf}"),
        ),
        (Some(pair.clone()), "token=acme-staff-token".to_owned()),
        (
            Some(pair.clone()),
            "token=acme-staff-token&login_csrf=0123456789abcdef0123456789abcdef".to_owned(),
        ),
    ] {
        let r = call(addr, "POST", "/login".into(), cookie, Some(body)).await;
        assert_eq!(r.status, 403, "{r}");
        assert!(
            !r.to_string().contains("sendlater_session="),
            "no session: {r}"
        );
    }
    let r = call(
        addr,
        "POST",
        "/login".into(),
        Some(pair.clone()),
        Some(format!("token=wrong&login_csrf={login_csrf}")),
    )
    .await;
    assert_eq!(r.status, 401);
    assert!(!r.to_string().contains("sendlater_session="));
    let r = call(
        addr,
        "POST",
        "/login".into(),
        Some(pair),
        Some(format!("token=acme-staff-token&login_csrf={login_csrf}")),
    )
    .await;
    assert_eq!(r.status, 303);
    let sid = session_of(&r);
    // One account: `/` leads to its deferred view.
    let r = call(addr, "GET", "/".into(), Some(sid.clone()), None).await;
    assert_eq!(r.header("location"), Some("/accounts/acme/deferred"));
    let r = call(
        addr,
        "GET",
        "/accounts/acme/deferred".into(),
        Some(sid.clone()),
        None,
    )
    .await;
    assert_eq!(r.status, 200);
    for path in [
        "/accounts/other/deferred",
        "/accounts/other/tickets/T1",
        "/accounts/other/schedule",
        "/accounts/other/events",
        "/operations",
    ] {
        let r = call(addr, "GET", path.into(), Some(sid.clone()), None).await;
        assert_eq!(r.status, 403, "{path}: {r}");
        assert!(r.body.contains("Not allowed"), "{path}");
    }
    // A form post to a foreign account is refused too, CSRF token or not.
    let mut c = t.client.clone();
    let other = c
        .schedule_message(operator(email_reply("other", "T1", T0 + 3_600_000)))
        .await
        .unwrap()
        .into_inner();
    let page = call(
        addr,
        "GET",
        "/accounts/acme/deferred".into(),
        Some(sid.clone()),
        None,
    )
    .await;
    let csrf = csrf_of(&page.body);
    let r = call(
        addr,
        "POST",
        format!("/accounts/other/items/{}/cancel", other.item_id),
        Some(sid),
        Some(format!("csrf={csrf}")),
    )
    .await;
    assert_eq!(r.status, 403);
    let still = c
        .get_item(operator(item_ref("other", &other.item_id)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(still.state, pb::State::Pending as i32);
}

/// A change committed after a page was rendered but before its event stream
/// connected still reaches the page: the page carries the sequence it reflects and the
/// stream resumes from it (and from Last-Event-ID after a reconnect).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_stream_resumes_from_the_sequence_the_page_was_rendered_at() {
    let (t, addr) = console_server(Vec::new()).await;
    let first = t.schedule(email_reply("acme", "T1", T0 + 3_600_000)).await;
    let (sid, page) = open_page(addr, "/accounts/acme/deferred").await;
    let page = page.body;
    let at = page.find("data-after=\"").expect("the page's sequence") + 12;
    let after: u64 = page[at..page[at..].find('"').unwrap() + at]
        .parse()
        .unwrap();
    // Committed before the stream connects.
    let second = t.schedule(email_reply("acme", "T2", T0 + 7_200_000)).await;
    let got = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        write!(
            s,
            "GET /accounts/acme/events?after={after} HTTP/1.1\r\nHost: {addr}\r\n\
             Cookie: sendlater_session={sid}\r\n\r\n"
        )
        .unwrap();
        let mut seen = String::new();
        let mut buf = [0u8; 4096];
        while !seen.contains("\"type\":\"SCHEDULED\"") {
            let n = s.read(&mut buf).expect("the change arrives");
            assert!(n > 0, "stream ended: {seen}");
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        seen
    })
    .await
    .unwrap();
    assert!(got.contains(&second.item_id), "{got}");
    assert!(!got.contains(&format!("\"{}\"", first.item_id)), "{got}");
    assert!(got.contains(&format!("id: {}", after + 1)), "{got}");
}

/// The console's reschedule takes "next business morning" as the CLI does: the first
/// opening of a business day of the account's hours after now; without hours it says so
/// and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reschedule_to_the_next_business_morning_uses_the_accounts_hours() {
    let (t, addr) = console_server(Vec::new()).await;
    let item = t.schedule(email_reply("acme", "T1", T0 + 3_600_000)).await;
    let (sid, page) = open_page(addr, "/accounts/acme/tickets/T1").await;
    let csrf = csrf_of(&page.body);
    let path = format!("/accounts/acme/items/{}/reschedule", item.item_id);
    let body = format!("csrf={csrf}&tz=UTC&when=next+business+morning");
    let r = call(
        addr,
        "POST",
        path.clone(),
        Some(sid.clone()),
        Some(body.clone()),
    )
    .await;
    assert_eq!(r.status, 400, "no hours set: {r}");
    assert!(r.body.contains("no business hours"), "{r}");
    assert_eq!(ms(&t.get_acme(&item.item_id).await.send_at), T0 + 3_600_000);
    // Monday to Friday 09:00-18:00 UTC; T0 is Wednesday 2026-11-25 12:00 UTC.
    let days = (1..=5)
        .map(|weekday| pb::BusinessDay {
            weekday,
            open: "09:00".into(),
            close: "18:00".into(),
        })
        .collect();
    t.client
        .clone()
        .set_business_hours(pb::BusinessHours {
            account_id: "acme".into(),
            time_zone: "UTC".into(),
            days,
            holidays: Vec::new(),
        })
        .await
        .unwrap();
    let r = call(addr, "POST", path, Some(sid), Some(body)).await;
    assert_eq!(r.status, 303, "{r}");
    // Thursday 09:00 UTC.
    assert_eq!(
        ms(&t.get_acme(&item.item_id).await.send_at),
        T0 + 21 * 3_600_000
    );
}

/// The default console address taken by something else does not stop the service (it
/// starts without its console); an address asked for that cannot be bound does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_default_console_address_leaves_the_service_up_without_it() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let t = TestServer::start_with(|c| {
        c.console_listen = Some(addr);
        c.console_optional = true;
    })
    .await;
    assert_eq!(t.running().console_addr(), None);
    t.schedule(email_reply("acme", "T1", T0 + 3_600_000)).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = sendlater::config::ServerConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        dir.path().join("x.db"),
    );
    config.console_listen = Some(addr);
    let err = sendlater::server::start(config)
        .await
        .err()
        .expect("asked-for address taken");
    assert!(err.to_string().contains(&addr.to_string()), "{err}");
}

/// One HTTP exchange with the console, with extra headers (a `Host` replaces the
/// default one).
async fn call_with(
    addr: SocketAddr,
    method: &'static str,
    path: String,
    headers: &[(&str, &str)],
    cookie: Option<String>,
    form: Option<String>,
) -> HttpResponse {
    http_exchange_with(
        addr,
        method,
        &path,
        headers,
        cookie.as_deref(),
        form.as_deref(),
    )
    .await
    .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

/// DNS rebinding: a page of another site whose name now resolves to 127.0.0.1 reaches
/// the console with its own name in Host. The console answers only to the names it
/// is bound to (127.0.0.1, localhost, [::1] at its port): another name gets no page,
/// no session, and a session made under the right name does not open it either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_naming_another_host_gets_no_page_and_no_session() {
    let (t, addr) = console_server(Vec::new()).await;
    t.schedule(email_reply("acme", "T1", T0 + 3_600_000)).await;
    let port = addr.port();
    let evil = format!("evil.example:{port}");
    let other_port = format!("localhost:{}", port.wrapping_add(1).max(1));
    for host in [
        evil.as_str(),
        "evil.example",
        other_port.as_str(),
        "127.0.0.1.nip.io",
        "",
    ] {
        for path in ["/", "/accounts/acme/deferred", "/accounts/acme/tickets/T1"] {
            let r = call_with(addr, "GET", path.into(), &[("Host", host)], None, None).await;
            assert_eq!(r.status, 421, "Host {host:?} {path}: {r}");
            assert!(r.header("set-cookie").is_none(), "Host {host:?}: {r}");
            assert!(r.body.contains("Host"), "a clear refusal: {r}");
            assert!(!r.body.contains("T1"), "no page: {r}");
        }
    }
    // A session made under the right name does not open the console under another.
    let (sid, page) = open_page(addr, "/accounts/acme/tickets/T1").await;
    assert_eq!(page.status, 200, "{page}");
    let r = call_with(
        addr,
        "GET",
        "/accounts/acme/tickets/T1".into(),
        &[("Host", &evil)],
        Some(sid.clone()),
        None,
    )
    .await;
    assert_eq!(r.status, 421, "{r}");
    assert!(!r.body.contains("Re: your question"), "{r}");
    // The names it is bound to work.
    for host in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        format!("LocalHost:{port}"),
    ] {
        let r = call_with(
            addr,
            "GET",
            "/accounts/acme/tickets/T1".into(),
            &[("Host", &host)],
            Some(sid.clone()),
            None,
        )
        .await;
        assert_eq!(r.status, 200, "Host {host}: {r}");
        assert!(r.body.contains("Re: your question"), "{r}");
    }
}

/// A form another site posts (its Origin, or with no Origin its Sec-Fetch-Site) is
/// refused before it is read, even with a valid session and CSRF token, and changes
/// nothing; the console's own origin goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_from_another_origin_is_refused_and_changes_nothing() {
    let (t, addr) = console_server(Vec::new()).await;
    let item = t.schedule(email_reply("acme", "T1", T0 + 3_600_000)).await;
    let (sid, page) = open_page(addr, "/accounts/acme/tickets/T1").await;
    let csrf = csrf_of(&page.body);
    let cancel = format!("/accounts/acme/items/{}/cancel", item.item_id);
    let port = addr.port();
    let other_port = format!("http://127.0.0.1:{}", port.wrapping_add(1).max(1));
    let foreign: [&[(&str, &str)]; 6] = [
        &[("Origin", "http://evil.example")],
        &[("Origin", &other_port)],
        &[("Origin", "null")],
        &[("Sec-Fetch-Site", "cross-site")],
        &[("Sec-Fetch-Site", "same-site")],
        &[
            ("Origin", "http://evil.example"),
            ("Sec-Fetch-Site", "same-origin"),
        ],
    ];
    for headers in foreign {
        let r = call_with(
            addr,
            "POST",
            cancel.clone(),
            headers,
            Some(sid.clone()),
            Some(format!("csrf={csrf}")),
        )
        .await;
        assert_eq!(r.status, 403, "{headers:?}: {r}");
        assert!(r.body.contains("another site"), "a clear refusal: {r}");
    }
    t.settle().await;
    assert_eq!(
        t.get_acme(&item.item_id).await.state,
        pb::State::Pending as i32
    );
    // The console's own origin.
    let own = format!("http://127.0.0.1:{port}");
    let r = call_with(
        addr,
        "POST",
        cancel,
        &[("Origin", &own), ("Sec-Fetch-Site", "same-origin")],
        Some(sid),
        Some(format!("csrf={csrf}")),
    )
    .await;
    assert_eq!(r.status, 303, "{r}");
    assert_eq!(
        t.get_acme(&item.item_id).await.state,
        pb::State::Cancelled as i32
    );
}

/// Names the operator configured (`--console-host`, `console_hosts`): a bare name at
/// any port (a reverse proxy's), `name:port` at that port only; both as an Origin too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_answers_to_the_host_names_its_operator_configured() {
    let t = TestServer::start_with(|c| {
        c.console_listen = Some("127.0.0.1:0".parse().unwrap());
        c.console_hosts = vec!["desk.example.com".into(), "desk.example.org:8443".into()];
    })
    .await;
    let addr = t.running().console_addr().expect("the console is on");
    let item = t.schedule(email_reply("acme", "T1", T0 + 3_600_000)).await;
    for (host, status) in [
        ("desk.example.com", 303),
        ("DESK.example.com:443", 303),
        ("desk.example.org:8443", 303),
        ("desk.example.org", 421),
        ("desk.example.org:8080", 421),
        ("example.com", 421),
    ] {
        let r = call_with(addr, "GET", "/".into(), &[("Host", host)], None, None).await;
        assert_eq!(r.status, status, "Host {host}: {r}");
    }
    let first = call_with(
        addr,
        "GET",
        "/accounts/acme/tickets/T1".into(),
        &[("Host", "desk.example.com")],
        None,
        None,
    )
    .await;
    let sid = session_of(&first);
    let page = call_with(
        addr,
        "GET",
        "/accounts/acme/tickets/T1".into(),
        &[("Host", "desk.example.com")],
        Some(sid.clone()),
        None,
    )
    .await;
    assert_eq!(page.status, 200, "{page}");
    let csrf = csrf_of(&page.body);
    let r = call_with(
        addr,
        "POST",
        format!("/accounts/acme/items/{}/cancel", item.item_id),
        &[
            ("Host", "desk.example.com"),
            ("Origin", "http://desk.example.com"),
        ],
        Some(sid),
        Some(format!("csrf={csrf}")),
    )
    .await;
    assert_eq!(r.status, 303, "{r}");
    assert_eq!(
        t.get_acme(&item.item_id).await.state,
        pb::State::Cancelled as i32
    );
}

/// Posts the login form with `token` (a fresh form and its cookie first).
async fn log_in(addr: SocketAddr, token: &str) -> HttpResponse {
    let form = call(addr, "GET", "/login".into(), None, None).await;
    assert_eq!(form.status, 200, "{form}");
    let pair = form
        .header("set-cookie")
        .expect("a login cookie")
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let at = form
        .body
        .find("name=\"login_csrf\" value=\"")
        .expect("a login_csrf field")
        + 25;
    let login_csrf = form.body[at..at + 32].to_owned();
    call(
        addr,
        "POST",
        "/login".into(),
        Some(pair),
        Some(format!("token={token}&login_csrf={login_csrf}")),
    )
    .await
}

/// Roles hold in the console as over gRPC: a connector token (Dispatch only) opens
/// no session; a backend token for every account sees the accounts but not the
/// operations page, which needs an admin token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_backend_and_admin_tokens_log_in_and_operations_needs_admin() {
    let tokens = vec![
        TokenConfig {
            token: "connector-token-all".into(),
            role: Role::Connector,
            accounts: Accounts::All,
        },
        TokenConfig {
            token: "backend-token-all".into(),
            role: Role::Backend,
            accounts: Accounts::All,
        },
        TokenConfig {
            token: "operator-token-0001".into(),
            role: Role::Admin,
            accounts: Accounts::All,
        },
    ];
    let (t, addr) = console_server(tokens).await;
    let r = log_in(addr, "connector-token-all").await;
    assert_eq!(r.status, 403, "{r}");
    assert!(
        !r.to_string().contains("sendlater_session="),
        "no session: {r}"
    );
    assert!(r.body.contains("connector"), "a clear refusal: {r}");

    let backend = session_of(&log_in(addr, "backend-token-all").await);
    let r = call(
        addr,
        "GET",
        "/accounts/acme/deferred".into(),
        Some(backend.clone()),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{r}");
    let r = call(addr, "GET", "/operations".into(), Some(backend), None).await;
    assert_eq!(r.status, 403, "{r}");
    assert!(r.body.contains("admin"), "{r}");

    let admin = session_of(&log_in(addr, "operator-token-0001").await);
    let r = call(addr, "GET", "/operations".into(), Some(admin), None).await;
    assert_eq!(r.status, 200, "{r}");
    drop(t);
}

/// The operations page names the node serving it, the address it advertises and the
/// partitions it owns (one node: every one), escaped like everything else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operations_page_shows_this_node_its_address_and_its_partitions() {
    let t = TestServer::start_with(|c| {
        c.console_listen = Some("127.0.0.1:0".parse().unwrap());
        c.cluster.node_id = "desk<1>&co".into();
        c.cluster.partitions = 8;
    })
    .await;
    let addr = t.running().console_addr().expect("the console is on");
    let (sid, page) = open_page(addr, "/operations").await;
    assert_eq!(page.status, 200, "{page}");
    let cell = |body: &str, class: &str| -> String {
        let open = format!("<td class=\"{class}\">");
        let at = body
            .find(&open)
            .unwrap_or_else(|| panic!("no {class} on the page:\n{body}"))
            + open.len();
        body[at..at + body[at..].find("</td>").expect("closed")].to_owned()
    };
    assert_eq!(cell(&page.body, "node-id"), "desk&lt;1&gt;&amp;co");
    assert!(!page.body.contains("desk<1>"), "the id is shown as text");
    // The default address is the one it listens on, with the port it was given.
    assert_eq!(
        cell(&page.body, "node-address"),
        t.running().local_addr().to_string()
    );
    // The node owns all 8 (on PostgreSQL once it has taken the leases).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut page = page;
    while cell(&page.body, "node-partitions") != "8 of 8: 0-7" {
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            cell(&page.body, "node-partitions")
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        page = call(addr, "GET", "/operations".into(), Some(sid.clone()), None).await;
    }
    drop(t);
}

/// A negative max lateness from the schedule form is refused as over gRPC
/// (INVALID_ARGUMENT naming max_lateness there, 400 naming it here), and nothing is
/// scheduled; a positive one is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_negative_max_lateness_from_the_schedule_form_is_refused_like_over_grpc() {
    let (t, addr) = console_server(Vec::new()).await;
    let (sid, page) = open_page(addr, "/accounts/acme/schedule").await;
    assert_eq!(page.status, 200, "{page}");
    let csrf = csrf_of(&page.body);
    let form = |minutes: &str| {
        format!(
            "csrf={csrf}&kind=reply&channel=email&ticket_id=T1&author_id=ann\
             &to=client%40example.com&subject=Hi&text=Hello&when=in+1h&tz=UTC\
             &max_lateness_minutes={minutes}&on_late=fail"
        )
    };
    // Over gRPC.
    let mut req = email_reply("acme", "T1", T0 + 3_600_000);
    req.max_lateness = Some(prost_types::Duration {
        seconds: -300,
        nanos: 0,
    });
    let r = t.client.clone().schedule_message(req).await;
    assert_status(r, tonic::Code::InvalidArgument, "max_lateness: ");
    for minutes in ["-5", "-1"] {
        let r = call(
            addr,
            "POST",
            "/accounts/acme/schedule".into(),
            Some(sid.clone()),
            Some(form(minutes)),
        )
        .await;
        assert_eq!(r.status, 400, "{minutes}: {r}");
        assert!(r.body.contains("max_lateness"), "names the field: {r}");
    }
    t.settle().await;
    let listed = t.pending_acme().await;
    assert!(listed.items.is_empty(), "nothing scheduled: {listed:?}");
    let r = call(
        addr,
        "POST",
        "/accounts/acme/schedule".into(),
        Some(sid),
        Some(form("30")),
    )
    .await;
    assert_eq!(r.status, 303, "{r}");
    let listed = t.pending_acme().await;
    assert_eq!(listed.items.len(), 1, "{listed:?}");
    let lateness = listed.items[0].max_lateness.expect("max lateness kept");
    assert_eq!(lateness.seconds, 1800);
}
