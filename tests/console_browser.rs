//! The staff console in a real browser: headless Chromium (Debian's `chromium` and
//! `chromium-driver`, which scripts/test.sh installs) driven over WebDriver with
//! fantoccini, against a real server on ephemeral ports with the manual clock.
//!
//! Each test starts its own server and its own chromedriver (on a port chromedriver
//! picks itself and reports), so the tests run in parallel. Nothing waits by sleeping:
//! the browser is waited for with bounded polls of a condition (an element, a URL, a
//! JavaScript expression), the server with `wait_state` and the test connector's
//! `next_job()`; the manual clock moves only by `advance`.
//!
//! The browser runs in Europe/Moscow (TZ of chromedriver, which the browser inherits)
//! with the en-US locale (`--lang`) while the server's clock is UTC, so the tests also
//! see times turned into the viewer's zone by console.js (exactly, as that locale
//! writes them) and wall-clock times read in it.
//!
//! Screenshots of every page go to `target/console-screenshots/<name>.png`.
mod common;

use std::future::Future;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use sendlater::config::{Accounts, Role, TokenConfig};
use sendlater::pb;
use serde_json::{json, Value};

/// How long any wait for the browser or the server may take before the test fails.
const WAIT: Duration = Duration::from_secs(10);

/// The viewer's time zone (the server's clock and storage are UTC).
const ZONE: &str = "Europe/Moscow";

const HOUR: i64 = 3_600_000;

/// T0 (2026-11-25T12:00:00Z) as the console writes it in `<time datetime>`.
const T0_ISO: &str = "2026-11-25T12:00:00.000Z";

// ---------------------------------------------------------------------------------
// chromedriver and the browser

/// A chromedriver process (and the browser it starts, in the same process group):
/// killed when dropped, also when a test panics; with it goes its temp dir (the
/// browser's singleton lock dir and profile, which a killed browser leaves behind).
struct Driver {
    child: Child,
    _tmp: tempfile::TempDir,
}

impl Drop for Driver {
    fn drop(&mut self) {
        // chromedriver leads its own process group (see `Driver::start`); the browser
        // it launched is in it too. Only this group is signalled.
        let pgid = self.child.id() as libc::pid_t;
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

impl Driver {
    /// Starts /usr/bin/chromedriver on a free port of its choice (`--port=0`, then the
    /// port it reports) and waits until its `/status` says ready.
    async fn start() -> (Driver, u16) {
        // chromedriver has been seen to exit at start on a loaded machine, before saying
        // its port: a second and third try, then the failure.
        for attempt in 1..=3 {
            if let Some(started) = Self::try_start().await {
                return started;
            }
            eprintln!("chromedriver ended before reporting its port (attempt {attempt} of 3)");
        }
        panic!("chromedriver ended before reporting its port, three times");
    }

    /// One start of chromedriver; `None` if it ended before reporting its port.
    async fn try_start() -> Option<(Driver, u16)> {
        let tmp = tempfile::tempdir().expect("a temp dir for the browser");
        let mut child = Command::new("/usr/bin/chromedriver")
            .arg("--port=0")
            .env("TMPDIR", tmp.path())
            .env("TZ", ZONE)
            .env("LANG", "en_US.UTF-8")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("/usr/bin/chromedriver starts (apt-get install chromium chromium-driver)");
        let stdout = child.stdout.take().expect("piped stdout");
        let driver = Driver { child, _tmp: tmp };
        // chromedriver writes "ChromeDriver was started successfully on port N." and
        // keeps writing afterwards: one thread reads it to the end.
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) =
                    line.strip_prefix("ChromeDriver was started successfully on port ")
                {
                    if let (Some(tx), Ok(port)) =
                        (tx.take(), rest.trim_end_matches('.').parse::<u16>())
                    {
                        let _ = tx.send(port);
                    }
                }
            }
        });
        let port = tokio::time::timeout(WAIT, rx)
            .await
            .expect("chromedriver reports its port within 10 s")
            .ok()?;
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        poll("chromedriver's /status to say ready", || async move {
            match tokio::time::timeout(WAIT, http_exchange(addr, "GET", "/status", None, None))
                .await
            {
                Ok(Ok(r)) => {
                    r.status == 200
                        && serde_json::from_str::<Value>(&r.body)
                            .is_ok_and(|v| v["value"]["ready"] == json!(true))
                }
                _ => false,
            }
        })
        .await;
        Some((driver, port))
    }
}

/// A WebDriver session in headless Chromium, on the console at `base`.
struct Browser {
    client: Client,
    base: String,
    // Dropped after `client`: the session first, then its driver.
    _driver: Driver,
}

impl std::ops::Deref for Browser {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.client
    }
}

impl Browser {
    async fn start(console: SocketAddr) -> Browser {
        let (driver, port) = Driver::start().await;
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1200,900",
                         "--lang=en-US"],
            }),
        );
        // WebDriver on loopback is plain HTTP: no TLS connector needed.
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .expect("a WebDriver session in headless Chromium");
        Browser {
            client,
            base: format!("http://{console}"),
            _driver: driver,
        }
    }

    /// Ends the session (the browser exits and chromedriver removes its profile).
    async fn close(self) {
        let Browser {
            client, _driver, ..
        } = self;
        client.close().await.expect("close the session");
    }

    async fn open(&self, path: &str) {
        self.client
            .goto(&format!("{}{path}", self.base))
            .await
            .unwrap_or_else(|e| panic!("open {path}: {e}"));
    }

    /// The path and query the browser is on.
    async fn here(&self) -> String {
        let u = self.client.current_url().await.expect("current url");
        match u.query() {
            Some(q) => format!("{}?{q}", u.path()),
            None => u.path().to_owned(),
        }
    }

    /// Waits (bounded) for an element matching `css`.
    async fn find(&self, css: &str) -> Element {
        self.client
            .wait()
            .at_most(WAIT)
            .every(Duration::from_millis(20))
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no element {css} within {WAIT:?}: {e}"))
    }

    async fn count(&self, css: &str) -> usize {
        self.client
            .find_all(Locator::Css(css))
            .await
            .expect("find_all")
            .len()
    }

    /// Runs `script` (a function body: `return ...`) in the page.
    async fn js(&self, script: &str) -> Value {
        self.client
            .execute(script, vec![])
            .await
            .unwrap_or_else(|e| panic!("script {script}: {e}"))
    }

    /// `attr` of every element matching `css`, in document order.
    async fn attrs(&self, css: &str, attr: &str) -> Vec<String> {
        let v = self
            .client
            .execute(
                "return Array.from(document.querySelectorAll(arguments[0]), e => e.getAttribute(arguments[1]));",
                vec![json!(css), json!(attr)],
            )
            .await
            .expect("read attributes");
        serde_json::from_value(v).expect("strings")
    }

    /// The `textContent` of the first element matching `css` (waited for).
    async fn text_content(&self, css: &str) -> String {
        let el = self.find(css).await;
        el.prop("textContent")
            .await
            .expect("textContent")
            .unwrap_or_default()
    }

    /// Waits (bounded) until the JavaScript expression `expr` is truthy in the page.
    async fn until(&self, what: &str, expr: &str) {
        let script = format!("return !!({expr});");
        poll(what, || async { self.js(&script).await == json!(true) }).await;
    }

    /// The value of the session cookie (HttpOnly: WebDriver still sees it).
    async fn session_cookie(&self) -> String {
        self.client
            .get_named_cookie("sendlater_session")
            .await
            .expect("a session cookie")
            .value()
            .to_owned()
    }

    /// Saves what the window shows to `target/console-screenshots/<name>.png`.
    async fn screenshot(&self, name: &str) {
        let png = self.client.screenshot().await.expect("screenshot");
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/console-screenshots");
        std::fs::create_dir_all(&dir).expect("screenshot dir");
        std::fs::write(dir.join(format!("{name}.png")), png).expect("write screenshot");
    }
}

/// Re-checks `cond` until it holds; fails the test after [`WAIT`].
async fn poll<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + WAIT;
    while !cond().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {WAIT:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------
// plain HTTP (what WebDriver does not show: statuses and headers)

async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    cookie: Option<&str>,
    form: Option<&str>,
) -> HttpResponse {
    tokio::time::timeout(WAIT, http_exchange(addr, method, path, cookie, form))
        .await
        .unwrap_or_else(|_| panic!("{method} {path}: no answer within {WAIT:?}"))
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

// ---------------------------------------------------------------------------------
// servers

/// A server whose console is open (no tokens: a session is made on the first visit).
async fn open_console() -> (TestServer, SocketAddr) {
    let t =
        TestServer::start_with(|c| c.console_listen = Some("127.0.0.1:0".parse().unwrap())).await;
    let addr = t.running().console_addr().expect("the console is on");
    (t, addr)
}

fn token(t: &str, role: Role, accounts: Accounts) -> TokenConfig {
    TokenConfig {
        token: t.into(),
        role,
        accounts,
    }
}

/// A server with tokens: `acme-staff-token` sees account acme only;
/// `admin-operator-token` every account.
async fn console_with_tokens() -> (TestServer, SocketAddr) {
    let t = TestServer::start_with(|c| {
        c.console_listen = Some("127.0.0.1:0".parse().unwrap());
        c.tokens = vec![
            token(
                "acme-staff-token",
                Role::Backend,
                Accounts::Only(vec!["acme".into()]),
            ),
            token("admin-operator-token", Role::Admin, Accounts::All),
        ];
    })
    .await;
    let addr = t.running().console_addr().expect("the console is on");
    (t, addr)
}

fn as_admin<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert(
        "authorization",
        "Bearer admin-operator-token".parse().unwrap(),
    );
    r
}

fn email(ticket: &str, at: i64, subject: &str, body: &str) -> pb::ScheduleRequest {
    let mut r = email_reply("acme", ticket, at);
    if let Some(pb::schedule_request::Content::Email(e)) = &mut r.content {
        e.subject = subject.into();
        e.text_body = body.into();
    }
    r
}

fn chat(ticket: &str, at: i64, text: &str) -> pb::ScheduleRequest {
    let mut r = chat_reply("acme", ticket, at);
    if let Some(pb::schedule_request::Content::Chat(c)) = &mut r.content {
        c.text = text.into();
    }
    r
}

/// The tickets of the deferred list, top to bottom.
async fn deferred_rows(b: &Browser) -> Vec<String> {
    b.attrs("table#deferred tr.ticket", "data-ticket").await
}

// ---------------------------------------------------------------------------------
// the scenarios

/// a + h: a token logs in (a wrong one is refused); the session sees its account and
/// nothing of another one, in the browser and by status code.
#[tokio::test]
async fn a_token_logs_in_and_its_session_sees_only_its_accounts() {
    let (mut t, console) = console_with_tokens().await;
    // Another account's ticket exists: the refusal below is not a "not found".
    t.client
        .schedule_message(as_admin(email_reply("other", "T1", T0 + HOUR)))
        .await
        .expect("schedule in account other");
    let b = Browser::start(console).await;

    // Without a session every page leads to the login form.
    b.open("/accounts/acme/deferred").await;
    b.find("form#login input[name=token]").await;
    assert_eq!(b.here().await, "/login");
    b.screenshot("login").await;

    // A wrong token is refused (401), and makes no session.
    b.find("form#login input[name=token]")
        .await
        .send_keys("acme-staff-toke")
        .await
        .unwrap();
    b.find("form#login button[type=submit]")
        .await
        .click()
        .await
        .unwrap();
    let refused = b.text_content("p.error").await;
    assert!(refused.contains("not known"), "{refused}");
    assert!(b
        .find_all(Locator::Css("table#deferred, p#empty"))
        .await
        .unwrap()
        .is_empty());
    assert!(
        b.get_named_cookie("sendlater_session").await.is_err(),
        "a refused login made a session"
    );
    // A post that did not come from the login form (no login_csrf bound to a cookie)
    // is refused before the token is even looked at.
    let wrong = http(
        console,
        "POST",
        "/login",
        None,
        Some("token=acme-staff-toke"),
    )
    .await;
    assert_eq!(wrong.status, 403);
    assert!(!wrong
        .header("set-cookie")
        .is_some_and(|c| c.starts_with("sendlater_session=")));

    // The right token: a session, and the start page leads to the one account.
    b.find("form#login input[name=token]")
        .await
        .send_keys("acme-staff-token")
        .await
        .unwrap();
    b.find("form#login button[type=submit]")
        .await
        .click()
        .await
        .unwrap();
    b.find("table#deferred, p#empty").await;
    assert_eq!(b.here().await, "/accounts/acme/deferred");
    b.open("/").await;
    b.find("table#deferred, p#empty").await;
    assert_eq!(b.here().await, "/accounts/acme/deferred");
    assert_eq!(b.text_content("header.top .account strong").await, "acme");

    // h: another account's ticket (and list, and events, and the operations page) is
    // refused: the page says so and the status is 403.
    let session = b.session_cookie().await;
    for path in [
        "/accounts/other/tickets/T1",
        "/accounts/other/deferred",
        "/accounts/other/schedule",
        "/accounts/other/events",
        "/operations",
    ] {
        b.open(path).await;
        assert_eq!(b.text_content("h1").await, "Not allowed", "{path}");
        assert!(
            !b.source().await.unwrap().contains("Re: your question"),
            "{path} shows the other account's item"
        );
        let r = http(console, "GET", path, Some(&session), None).await;
        assert_eq!(r.status, 403, "{path}: {}", r.head);
    }
    // The same session still sees its own account.
    let own = http(
        console,
        "GET",
        "/accounts/acme/deferred",
        Some(&session),
        None,
    )
    .await;
    assert_eq!(own.status, 200);

    // Logging out ends the session: the browser is back at the login form, and the
    // old cookie no longer opens anything.
    b.open("/accounts/acme/deferred").await;
    b.find("form.logout button").await.click().await.unwrap();
    b.find("form#login").await;
    assert_eq!(b.here().await, "/login");
    let after = http(
        console,
        "GET",
        "/accounts/acme/deferred",
        Some(&session),
        None,
    )
    .await;
    assert!(
        (300..400).contains(&after.status) && after.header("location") == Some("/login"),
        "a logged-out session still works: {}",
        after.head
    );

    b.close().await;
    t.stop().await;
}

/// b: the schedule form, filled in as a person would, in the viewer's zone; the
/// browser lands on the ticket page with the new pending item.
#[tokio::test]
async fn scheduling_from_the_form_lands_on_the_ticket_with_a_pending_item() {
    let (mut t, console) = open_console().await;
    let b = Browser::start(console).await;

    b.open("/accounts/acme/schedule").await;
    let form = b.find("form#schedule").await;
    // console.js put the viewer's zone into the form.
    b.until(
        "console.js to fill in the zone",
        &format!("document.querySelector('form#schedule input.tz').value === '{ZONE}'"),
    )
    .await;
    assert_eq!(b.text_content("form#schedule .tz-name").await, ZONE);
    form.find(Locator::Css("select[name=kind]"))
        .await
        .unwrap()
        .select_by_value("reply")
        .await
        .unwrap();
    form.find(Locator::Css("select[name=channel]"))
        .await
        .unwrap()
        .select_by_value("email")
        .await
        .unwrap();
    fill(
        &form,
        &[
            ("ticket_id", "T-form"),
            ("author_id", "ann"),
            ("to", "client@example.com"),
            ("subject", "Re: refund"),
            ("when", "tomorrow 09:00"),
        ],
        "Your refund is on its way.",
    )
    .await;
    b.screenshot("schedule").await;
    form.find(Locator::Css("button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();

    let li = b.find("li.item.pending[data-state=PENDING]").await;
    assert_eq!(b.here().await, "/accounts/acme/tickets/T-form");
    let id = li.attr("data-item").await.unwrap().expect("data-item");
    // "tomorrow 09:00" was read in the viewer's zone: 09:00 Moscow is 06:00 UTC, the
    // day after T0 (12:00 UTC).
    let item = t.get_acme(&id).await;
    assert_eq!(ms(&item.send_at), T0 + 18 * HOUR, "{item:?}");
    assert_eq!(item.ticket_id, "T-form");
    assert_eq!(
        b.text_content(&format!("li#{id} p.subject")).await,
        "Re: refund"
    );
    let zone_note = b.text_content(&format!("li#{id} span.zone")).await;
    assert!(
        zone_note.contains("2026-11-26 09:00") && zone_note.contains(ZONE),
        "{zone_note}"
    );
    // The time is shown in the viewer's zone (console.js rewrote the UTC text).
    b.until(
        "the item's time in the viewer's zone",
        &format!("!document.querySelector('li#{id} time.local').textContent.includes('UTC')"),
    )
    .await;
    let shown = b.text_content(&format!("li#{id} time.local")).await;
    assert!(shown.contains("09:00"), "shown as {shown:?}");

    // A chat reply "in 2h": the chat fields appear when chat is picked.
    b.open("/accounts/acme/schedule?ticket_id=T-form").await;
    let form = b.find("form#schedule").await;
    assert_eq!(
        form.find(Locator::Css("input[name=ticket_id]"))
            .await
            .unwrap()
            .prop("value")
            .await
            .unwrap()
            .as_deref(),
        Some("T-form"),
        "the ticket is prefilled from the query"
    );
    form.find(Locator::Css("select[name=channel]"))
        .await
        .unwrap()
        .select_by_value("chat")
        .await
        .unwrap();
    b.until("the chat fields to show", "!document.querySelector('fieldset.chat').hidden && document.querySelector('fieldset.email').hidden")
        .await;
    fill(
        &form,
        &[
            ("author_id", "bob"),
            ("conversation_id", "c-9"),
            ("when", "in 2h"),
        ],
        "Good morning!",
    )
    .await;
    form.find(Locator::Css("button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    b.until(
        "two pending items on the ticket page",
        "document.querySelectorAll('li.item.pending[data-state=PENDING]').length === 2",
    )
    .await;
    assert_eq!(b.here().await, "/accounts/acme/tickets/T-form");
    let ids = b.attrs("li.item", "data-item").await;
    let chat_item = t.get_acme(&ids[0]).await;
    assert_eq!(
        ms(&chat_item.send_at),
        T0 + 2 * HOUR,
        "the sooner one comes first: {chat_item:?}"
    );
    assert_eq!(chat_item.channel, pb::Channel::Chat as i32);

    b.close().await;
    t.stop().await;
}

/// b (what a person sees): the schedule form shows the fields of the picked channel
/// only.
#[tokio::test]
async fn the_schedule_form_shows_only_the_picked_channels_fields() {
    let (mut t, console) = open_console().await;
    let b = Browser::start(console).await;

    b.open("/accounts/acme/schedule").await;
    let form = b.find("form#schedule").await;
    b.until(
        "console.js to hide the chat fields",
        "document.querySelector('fieldset.chat').hidden",
    )
    .await;
    let email = b.find("form#schedule fieldset.email").await;
    let chat = b.find("form#schedule fieldset.chat").await;
    assert!(
        email.is_displayed().await.unwrap(),
        "email fields hidden for email"
    );
    assert!(
        !chat.is_displayed().await.unwrap(),
        "chat fields shown for email"
    );

    form.find(Locator::Css("select[name=channel]"))
        .await
        .unwrap()
        .select_by_value("chat")
        .await
        .unwrap();
    b.until(
        "console.js to hide the email fields",
        "document.querySelector('fieldset.email').hidden",
    )
    .await;
    assert!(
        chat.is_displayed().await.unwrap(),
        "chat fields hidden for chat"
    );
    assert!(
        !email.is_displayed().await.unwrap(),
        "email fields shown for chat"
    );

    b.close().await;
    t.stop().await;
}

/// c: the deferred list is in next-send order, soonest first, and latest first.
#[tokio::test]
async fn the_deferred_list_is_in_next_send_order_both_ways() {
    let (mut t, console) = open_console().await;
    // Names out of order, so an order by name would fail.
    t.schedule(email("T-b", T0 + 3 * HOUR, "Re: invoice", "Attached."))
        .await;
    t.schedule(chat("T-a", T0 + 5 * HOUR, "Later")).await;
    t.schedule(email("T-a", T0 + HOUR, "Re: login", "Reset link inside."))
        .await;
    t.schedule(chat("T-c", T0 + 2 * HOUR, "Fixed!")).await;
    let b = Browser::start(console).await;

    b.open("/").await;
    // The open console's start page asks for an account.
    b.find("form#go input[name=account]")
        .await
        .send_keys("acme")
        .await
        .unwrap();
    b.find("form#go button[type=submit]")
        .await
        .click()
        .await
        .unwrap();
    b.find("table#deferred").await;
    assert_eq!(b.here().await, "/accounts/acme/deferred");
    assert_eq!(deferred_rows(&b).await, ["T-a", "T-c", "T-b"]);
    assert_eq!(
        b.text_content("tr.ticket[data-ticket=T-a] td.count").await,
        "2"
    );
    assert_eq!(
        b.attrs("tr.ticket td.next-send time", "datetime").await,
        [
            "2026-11-25T13:00:00.000Z",
            "2026-11-25T14:00:00.000Z",
            "2026-11-25T15:00:00.000Z"
        ]
    );
    // In the viewer's zone: 13:00 UTC is 16:00 in Moscow.
    b.until(
        "times in the viewer's zone",
        "!document.querySelector('tr.ticket td.next-send time').textContent.includes('UTC')",
    )
    .await;
    let first = b.text_content("tr.ticket td.next-send time").await;
    // Exactly: the browser's zone is Europe/Moscow (TZ) and its locale en-US (--lang).
    assert_eq!(first, "Nov 25, 2026, 04:00 PM GMT+3");
    b.screenshot("deferred").await;

    b.find("a#order-desc").await.click().await.unwrap();
    b.find("a#order-desc[aria-current=true]").await;
    assert_eq!(b.here().await, "/accounts/acme/deferred?order=desc");
    assert_eq!(deferred_rows(&b).await, ["T-b", "T-c", "T-a"]);
    b.find("a#order-asc").await.click().await.unwrap();
    b.find("a#order-asc[aria-current=true]").await;
    assert_eq!(deferred_rows(&b).await, ["T-a", "T-c", "T-b"]);

    b.close().await;
    t.stop().await;
}

/// d: send now from the ticket page; the connector gets the job and acks it; the
/// deferred list open in another window drops the row live (no reload). Then the
/// operations page shows the connector.
#[tokio::test]
async fn send_now_goes_out_and_the_open_list_drops_the_row_without_a_reload() {
    let (mut t, console) = open_console().await;
    let mut connector =
        TestConnector::connect(&t.url(), &[pb::Channel::Chat, pb::Channel::Email], 4).await;
    let now = t
        .schedule(chat("T-now", T0 + 24 * HOUR, "On its way"))
        .await;
    t.schedule(email(
        "T-stay",
        T0 + 2 * HOUR,
        "Re: stays",
        "Still waiting.",
    ))
    .await;
    let b = Browser::start(console).await;

    b.open("/accounts/acme/deferred").await;
    b.find("tr.ticket[data-ticket=T-now]").await;
    assert_eq!(deferred_rows(&b).await, ["T-stay", "T-now"]);
    // The live stream is open before anything changes (console.js marks it).
    b.until(
        "the event stream to open",
        "document.body.dataset.live === 'on'",
    )
    .await;
    b.js("window.__marker = 42").await;
    let list = b.window().await.unwrap();

    // Send now, from the ticket page in a second window.
    let ticket = b.new_window(false).await.unwrap();
    b.switch_to_window(ticket.handle).await.unwrap();
    b.open("/accounts/acme/tickets/T-now").await;
    b.find(&format!("li#{} form.send-now button", now.item_id))
        .await
        .click()
        .await
        .unwrap();
    let job = connector.next_job().await;
    assert_eq!(job_item(&job), now.item_id);
    // The ticket page's own stream must be open before the ack, or it misses the
    // change (the stream starts at the moment it connects, not at the page's render).
    b.until(
        "the ticket page's event stream to open",
        "document.body.dataset.live === 'on'",
    )
    .await;
    connector.ack(&job, "chat-msg-1").await;
    wait_state(&t.client, "acme", &now.item_id, pb::State::Sent).await;
    // The ticket page shows it sent (after its own live refresh).
    b.find(&format!("li#{}.sent[data-state=SENT]", now.item_id))
        .await;
    assert_eq!(
        b.text_content(&format!("li#{} .provider-id", now.item_id))
            .await,
        "chat-msg-1"
    );

    // Back on the list: the row went away by itself, on the same page.
    b.switch_to_window(list).await.unwrap();
    b.until(
        "the sent ticket's row to go",
        "!document.querySelector('tr.ticket[data-ticket=\"T-now\"]')",
    )
    .await;
    assert_eq!(deferred_rows(&b).await, ["T-stay"]);
    assert_eq!(
        b.js("return window.__marker").await,
        json!(42),
        "the list page was reloaded"
    );
    assert_eq!(b.here().await, "/accounts/acme/deferred");

    // The operations page (the open console sees every account).
    b.open("/operations").await;
    let connectors = b.text_content("section#connectors").await;
    assert!(
        connectors.contains("test") && connectors.contains("CHAT"),
        "{connectors}"
    );
    b.find("svg#lateness-chat").await;
    b.screenshot("operations").await;

    b.close().await;
    t.stop().await;
}

/// e: cancel removes the item from the staff timeline and the ticket from the list.
#[tokio::test]
async fn cancel_removes_the_item_from_the_list_and_the_timeline() {
    let (mut t, console) = open_console().await;
    let gone = t
        .schedule(email(
            "T-cancel",
            T0 + HOUR,
            "Re: never mind",
            "Not needed.",
        ))
        .await;
    let kept = t.schedule(chat("T-keep", T0 + 2 * HOUR, "Kept")).await;
    let b = Browser::start(console).await;

    b.open("/accounts/acme/deferred").await;
    b.find("tr.ticket[data-ticket=T-cancel]").await;
    assert_eq!(deferred_rows(&b).await, ["T-cancel", "T-keep"]);

    b.find("tr.ticket[data-ticket=T-cancel] a.ticket-link")
        .await
        .click()
        .await
        .unwrap();
    b.find(&format!("li#{}[data-state=PENDING]", gone.item_id))
        .await;
    assert_eq!(b.here().await, "/accounts/acme/tickets/T-cancel");
    b.find(&format!("li#{} form.cancel button", gone.item_id))
        .await
        .click()
        .await
        .unwrap();
    b.find("p#empty").await;
    assert_eq!(
        b.count("li.item").await,
        0,
        "the cancelled item is still on the staff timeline"
    );
    assert_eq!(b.here().await, "/accounts/acme/tickets/T-cancel");
    wait_state(&t.client, "acme", &gone.item_id, pb::State::Cancelled).await;

    b.open("/accounts/acme/deferred").await;
    b.find("table#deferred").await;
    assert_eq!(deferred_rows(&b).await, ["T-keep"]);
    assert_eq!(
        t.get_acme(&kept.item_id).await.state,
        pb::State::Pending as i32
    );

    b.close().await;
    t.stop().await;
}

/// f: a client message after a scheduled reply turns it into an internal note, shown
/// at the time it was written.
#[tokio::test]
async fn a_client_message_turns_a_pending_reply_into_a_note_at_its_writing_time() {
    let (mut t, console) = open_console().await;
    let reply = t
        .schedule(email(
            "T-note",
            T0 + HOUR,
            "Re: delivery",
            "It ships Monday.",
        ))
        .await;
    t.advance(Duration::from_secs(5 * 60));
    t.client
        .record_ticket_activity(pb::RecordTicketActivityRequest {
            account_id: "acme".into(),
            ticket_id: "T-note".into(),
            author_kind: pb::AuthorKind::Client as i32,
            message_id: "msg-42".into(),
            occurred_at: Some(ts(T0 + 5 * 60_000)),
        })
        .await
        .expect("record activity");
    let b = Browser::start(console).await;

    b.open("/accounts/acme/tickets/T-note").await;
    let id = &reply.item_id;
    b.find(&format!("li#{id}.item.note[data-state=CONVERTED_TO_NOTE]"))
        .await;
    assert_eq!(b.count("li.item").await, 1);
    assert_eq!(
        b.count(&format!("li#{id} form")).await,
        0,
        "a note has no send actions"
    );
    // On the timeline at the time it was written (T0), not its send time nor the
    // client's message.
    assert_eq!(
        b.attrs(&format!("li#{id} .meta time"), "datetime").await,
        [T0_ISO]
    );
    let note = b.text_content(&format!("li#{id} p.note-at")).await;
    assert!(note.contains("client message msg-42"), "{note}");
    assert_eq!(
        b.attrs(&format!("li#{id} p.note-at time"), "datetime")
            .await,
        ["2026-11-25T13:00:00.000Z", "2026-11-25T12:05:00.000Z"],
        "{note}"
    );
    assert_eq!(
        b.text_content(&format!("li#{id} pre.body")).await,
        "It ships Monday."
    );
    b.screenshot("ticket-note").await;

    // Nothing of it is waiting any more.
    b.open("/accounts/acme/deferred").await;
    b.find("p#empty").await;

    b.close().await;
    t.stop().await;
}

/// g: the client's view lists only what was sent.
#[tokio::test]
async fn the_client_view_shows_only_what_was_sent() {
    let (mut t, console) = open_console().await;
    let mut connector = TestConnector::connect(&t.url(), &[pb::Channel::Email], 4).await;
    let sent = t
        .schedule(email(
            "T-cv",
            T0 + 60_000,
            "Re: your order",
            "It shipped today.",
        ))
        .await;
    t.advance(Duration::from_secs(60));
    let job = connector.next_job().await;
    assert_eq!(job_item(&job), sent.item_id);
    connector.ack(&job, "<msg-1@mail.example.com>").await;
    wait_state(&t.client, "acme", &sent.item_id, pb::State::Sent).await;
    let pending = t
        .schedule(email(
            "T-cv",
            T0 + 3 * HOUR,
            "Re: follow-up",
            "Did it arrive?",
        ))
        .await;
    let b = Browser::start(console).await;

    b.open("/accounts/acme/tickets/T-cv").await;
    b.find(&format!("li#{}.pending", pending.item_id)).await;
    assert_eq!(
        b.attrs("li.item", "data-state").await,
        ["SENT", "PENDING"],
        "the staff timeline shows both"
    );
    assert_eq!(b.count("li.item span.author").await, 2);
    b.until(
        "times in the viewer's zone",
        "!document.querySelector('li.item time.local').textContent.includes('UTC')",
    )
    .await;
    b.screenshot("ticket-staff").await;

    b.find("a#client-view").await.click().await.unwrap();
    b.find("a#staff-view").await;
    assert_eq!(b.here().await, "/accounts/acme/tickets/T-cv?view=client");
    assert_eq!(
        b.attrs("li.item", "data-item").await,
        std::slice::from_ref(&sent.item_id)
    );
    assert_eq!(b.attrs("li.item", "data-state").await, ["SENT"]);
    let page = b.text_content("main").await;
    for hidden in ["Did it arrive?", "Re: follow-up", "agent-1"] {
        assert!(
            !page.contains(hidden),
            "the client's view shows {hidden:?}:\n{page}"
        );
    }
    assert!(page.contains("It shipped today."), "{page}");
    assert_eq!(
        b.count("#timeline form").await,
        0,
        "the client's view has actions"
    );
    b.screenshot("ticket-client").await;

    b.close().await;
    t.stop().await;
}

/// i: markup in a subject and a body is shown as text and never runs; pages carry a
/// Content-Security-Policy that allows only the console's own script.
#[tokio::test]
async fn markup_in_a_subject_or_body_is_shown_as_text_and_never_runs() {
    let (mut t, console) = open_console().await;
    let subject = r#"<img src=x onerror="window.__pwned=1">"#;
    let body = "<script>window.__pwned=1</script> and <b>bold</b>";
    let chat_text = r#"</pre><script>window.__pwned=2</script><svg onload="window.__pwned=3">"#;
    let e = t.schedule(email("T-xss", T0 + HOUR, subject, body)).await;
    let c = t.schedule(chat("T-xss", T0 + 2 * HOUR, chat_text)).await;
    let b = Browser::start(console).await;

    b.open("/accounts/acme/tickets/T-xss").await;
    b.find(&format!("li#{}", c.item_id)).await;
    assert_eq!(
        b.text_content(&format!("li#{} p.subject strong", e.item_id))
            .await,
        subject
    );
    assert_eq!(
        b.text_content(&format!("li#{} pre.body", e.item_id)).await,
        body
    );
    assert_eq!(
        b.text_content(&format!("li#{} pre.body", c.item_id)).await,
        chat_text
    );
    // The edit form holds them as text too.
    assert_eq!(
        b.find(&format!("li#{} form.edit input[name=subject]", e.item_id))
            .await
            .prop("value")
            .await
            .unwrap()
            .as_deref(),
        Some(subject)
    );
    assert_eq!(
        b.count("main img, main script, main svg, main b").await,
        0,
        "markup from an item became elements"
    );
    assert_eq!(
        b.js("return typeof window.__pwned").await,
        json!("undefined")
    );
    b.screenshot("ticket-escaped").await;

    // The schedule form prefilled from the query echoes it as a value, not markup.
    let q = "subject=%3Cimg%20src%3Dx%20onerror%3D%22window.__pwned%3D1%22%3E&text=%3Cscript%3Ewindow.__pwned%3D1%3C%2Fscript%3E";
    b.open(&format!("/accounts/acme/schedule?{q}")).await;
    let form = b.find("form#schedule").await;
    assert_eq!(
        form.find(Locator::Css("input[name=subject]"))
            .await
            .unwrap()
            .prop("value")
            .await
            .unwrap()
            .as_deref(),
        Some(subject)
    );
    assert_eq!(
        b.text_content("form#schedule textarea[name=text]").await,
        "<script>window.__pwned=1</script>"
    );
    assert_eq!(
        b.js("return typeof window.__pwned").await,
        json!("undefined")
    );

    // The response itself: escaped, and under a CSP that allows only our own script.
    let session = b.session_cookie().await;
    let r = http(
        console,
        "GET",
        "/accounts/acme/tickets/T-xss",
        Some(&session),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.head);
    let csp = r
        .header("content-security-policy")
        .expect("a Content-Security-Policy");
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert!(
        r.body
            .contains("&lt;script&gt;window.__pwned=1&lt;/script&gt;"),
        "{}",
        r.body
    );
    assert!(!r.body.contains("<script>window"), "{}", r.body);
    assert!(!r.body.contains("<img src=x"), "{}", r.body);

    b.close().await;
    t.stop().await;
}

/// Types `fields` (input name, value) and `text` into the schedule form.
async fn fill(form: &Element, fields: &[(&str, &str)], text: &str) {
    for (field, value) in fields {
        form.find(Locator::Css(&format!("input[name={field}]")))
            .await
            .unwrap()
            .send_keys(value)
            .await
            .unwrap();
    }
    form.find(Locator::Css("textarea[name=text]"))
        .await
        .unwrap()
        .send_keys(text)
        .await
        .unwrap();
}
