//! Guessing tokens is slowed per peer address: after five unknown tokens from one
//! address, gRPC answers UNAUTHENTICATED and the console's login 429 without looking at
//! the token, for a lockout that the service's (manual) clock ends. Real server, real
//! gRPC and HTTP on 127.0.0.1.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use sendlater::config::{Accounts, Role, TokenConfig};
use sendlater::pb;
use tonic::Code;

const TOKEN: &str = "0f3c9a1e7b2d4c6a8e0f1a2b3c4d5e6f";

async fn secured() -> TestServer {
    TestServer::start_with(|c| {
        c.console_listen = Some("127.0.0.1:0".parse().unwrap());
        c.tokens = vec![TokenConfig {
            token: TOKEN.into(),
            role: Role::Admin,
            accounts: Accounts::All,
        }];
    })
    .await
}

async fn get_controls(t: &TestServer, token: &str) -> Result<(), tonic::Status> {
    let mut r = tonic::Request::new(pb::GetDispatchControlsRequest {
        account_id: "acme".into(),
    });
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    t.client.clone().get_dispatch_controls(r).await.map(|_| ())
}

#[tokio::test]
async fn after_five_unknown_tokens_grpc_refuses_even_the_right_token_until_the_lockout_ends() {
    let t = secured().await;
    get_controls(&t, TOKEN)
        .await
        .expect("the right token works");
    for i in 0..5 {
        let e = get_controls(&t, &format!("wrong-token-number-{i}"))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated);
        assert!(e.message().contains("unknown token"), "{e:?}");
    }
    // The sixth guess locks the address out for a second.
    let e = get_controls(&t, "wrong-token-number-5").await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    assert!(e.message().contains("too many"), "{e:?}");
    // Even the right token is not looked at now.
    let e = get_controls(&t, TOKEN).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    assert!(e.message().contains("retry in 1 s"), "{e:?}");

    t.advance(Duration::from_millis(999));
    assert!(get_controls(&t, TOKEN).await.is_err(), "still locked out");
    t.advance(Duration::from_millis(1));
    get_controls(&t, TOKEN)
        .await
        .expect("the right token works once the lockout is over");
}

/// The login form's cookie pair and its login_csrf value.
async fn login_form(addr: SocketAddr) -> (String, String) {
    let form = http_exchange(addr, "GET", "/login", None, None)
        .await
        .expect("GET /login");
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
    (pair, form.body[at..at + 32].to_owned())
}

async fn login(addr: SocketAddr, token: &str) -> HttpResponse {
    let (pair, csrf) = login_form(addr).await;
    http_exchange(
        addr,
        "POST",
        "/login",
        Some(&pair),
        Some(&format!("token={token}&login_csrf={csrf}")),
    )
    .await
    .expect("POST /login")
}

#[tokio::test]
async fn after_five_failed_logins_the_console_answers_429_until_the_lockout_ends() {
    let t = secured().await;
    let addr = t.running().console_addr().expect("the console is on");
    for i in 0..5 {
        let r = login(addr, &format!("wrong-token-number-{i}")).await;
        assert_eq!(r.status, 401, "{r}");
    }
    let r = login(addr, "wrong-token-number-5").await;
    assert_eq!(r.status, 429, "{r}");
    let r = login(addr, TOKEN).await;
    assert_eq!(r.status, 429, "the right token waits too: {r}");
    assert_eq!(r.header("retry-after"), Some("1"), "{r}");
    assert!(
        !r.to_string().contains("sendlater_session="),
        "no session: {r}"
    );
    // The console and gRPC share the table: the gRPC port refuses this address too.
    assert!(get_controls(&t, TOKEN).await.is_err());

    t.advance(Duration::from_secs(1));
    let r = login(addr, TOKEN).await;
    assert_eq!(r.status, 303, "{r}");
    assert!(r.to_string().contains("sendlater_session="), "{r}");
}
