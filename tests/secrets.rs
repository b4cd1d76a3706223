//! Secrets are never echoed: an SMTP URL's password and a webhook URL's path stay out
//! of error messages and `--help`, and a short token stops start-up without being shown.
//! Each test runs the real binary and reads what it prints.

use std::process::{Command, Output};

const SMTP_PASSWORD: &str = "Pa55-smtp-very-secret";
const HOOK_PATH: &str = "T0001/B0002/XyZsEcReTpAtH";

fn sendlater(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sendlater"));
    command.args(args);
    for (k, v) in env {
        command.env(k, v);
    }
    // The connector would otherwise reach for a server; it must fail before that.
    command.env("SENDLATER_SERVER", "http://127.0.0.1:9");
    command.env_remove("RUST_LOG");
    command.output().expect("the binary runs")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn an_unparseable_smtp_url_is_refused_without_showing_its_password() {
    let url = format!("smtp://bot:{SMTP_PASSWORD}@mail example.com:25");
    let o = sendlater(&["connector", "email", "--smtp", &url], &[]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(64), "{out}");
    assert!(out.contains("smtp"), "the message names the flag: {out}");
    assert!(!out.contains(SMTP_PASSWORD), "the password leaked: {out}");
}

#[test]
fn a_webhook_url_with_a_wrong_scheme_or_bad_character_is_refused_without_showing_its_path() {
    for url in [
        format!("ftp://hooks.example.com/services/{HOOK_PATH}"),
        format!("http://hooks.example.com/services/{HOOK_PATH} x"),
    ] {
        let o = sendlater(&["connector", "chat", "--webhook", &url], &[]);
        let out = text(&o);
        assert_eq!(o.status.code(), Some(64), "{url}: {out}");
        assert!(out.contains("webhook"), "the message names the flag: {out}");
        assert!(!out.contains("XyZsEcReTpAtH"), "the path leaked: {out}");
    }
}

#[test]
fn help_does_not_show_the_smtp_url_or_webhook_url_from_the_environment() {
    let smtp = format!("smtp://bot:{SMTP_PASSWORD}@mail.example.com:587");
    let o = sendlater(
        &["connector", "email", "--help"],
        &[("SENDLATER_SMTP", &smtp)],
    );
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(
        out.contains("SENDLATER_SMTP"),
        "the variable is named: {out}"
    );
    assert!(!out.contains(SMTP_PASSWORD), "the password leaked: {out}");

    let hook = format!("https://hooks.example.com/services/{HOOK_PATH}");
    let o = sendlater(
        &["connector", "chat", "--help"],
        &[("SENDLATER_WEBHOOK", &hook)],
    );
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(
        out.contains("SENDLATER_WEBHOOK"),
        "the variable is named: {out}"
    );
    assert!(!out.contains("XyZsEcReTpAtH"), "the path leaked: {out}");
}

#[test]
fn a_token_shorter_than_16_characters_stops_start_up_naming_its_position_not_its_value() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("sendlater.toml");
    std::fs::write(
        &config,
        r#"
[[tokens]]
token = "0f3c9a1e7b2d4c6a8e0f1a2b3c4d5e6f"
role = "admin"
accounts = ["*"]

[[tokens]]
token = "Sh0rtT0ken-15ch"
role = "backend"
accounts = ["acme"]
"#,
    )
    .expect("write config");
    // A database that cannot be opened: were the token accepted, start-up would stop
    // there instead (exit 1), never serve.
    let db = dir.path().join("missing-dir").join("x.db");
    let o = sendlater(
        &[
            "serve",
            "--config",
            config.to_str().expect("utf-8 path"),
            "--db",
            db.to_str().expect("utf-8 path"),
            "--listen",
            "127.0.0.1:0",
            "--console-listen",
            "off",
        ],
        &[],
    );
    let out = text(&o);
    assert_eq!(o.status.code(), Some(64), "{out}");
    assert!(out.contains("tokens[1].token"), "names the position: {out}");
    assert!(out.contains("16"), "says how long: {out}");
    assert!(!out.contains("Sh0rtT0ken-15ch"), "the token leaked: {out}");
    assert!(
        !out.contains("0f3c9a1e7b2d4c6a8e0f1a2b3c4d5e6f"),
        "the other token leaked: {out}"
    );
}
