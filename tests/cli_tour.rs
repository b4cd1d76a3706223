//! The README's "A two-minute tour with the CLI", run as written: the commands are read
//! from the README's block (so the test follows the documentation), each is run with the
//! real `sendlater` binary against a real `sendlater serve` (a temporary file, a free
//! port), and what each prints and how it exits is checked.
mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::cli::{rows, run, Serve};

/// The shell block of the README's tour section.
fn tour_block() -> &'static str {
    let readme = include_str!("../README.md");
    let section = readme
        .find("## A two-minute tour with the CLI")
        .expect("the README has the tour section");
    let rest = &readme[section..];
    let start = rest.find("```sh\n").expect("a sh block in the tour") + "```sh\n".len();
    let len = rest[start..].find("```").expect("the block is closed");
    &rest[start..start + len]
}

/// Splits one shell command line into words: double and single quotes, `\` line
/// continuations joined before, a `#` starting a word begins a comment.
fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word: Option<String> = None;
    let mut quote: Option<char> = None;
    for ch in line.chars() {
        match (quote, ch) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => word.get_or_insert_with(String::new).push(c),
            (None, '"' | '\'') => {
                quote = Some(ch);
                word.get_or_insert_with(String::new);
            }
            (None, c) if c.is_whitespace() => out.extend(word.take()),
            (None, '#') if word.is_none() => break,
            (None, c) => word.get_or_insert_with(String::new).push(c),
        }
    }
    assert!(quote.is_none(), "unclosed quote in {line:?}");
    out.extend(word);
    out
}

/// The tour's commands, each as its words (continuations joined, comments dropped).
fn tour_commands() -> Vec<Vec<String>> {
    tour_block()
        .replace("\\\n", " ")
        .lines()
        .map(words)
        .filter(|w| !w.is_empty())
        .collect()
}

/// `sendlater serve` on a temporary file and a free port; killed when dropped.
fn start_server() -> Serve {
    let dir = tempfile::tempdir().expect("temp dir");
    Serve::spawn(Serve::command(&dir.path().join("tour.db"))).keeping(dir)
}

/// A `sendlater` command of the tour (its words after `sendlater`), with the tour's
/// environment.
fn sendlater(server: &Serve, env: &[(String, String)], args: &[String]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sendlater"));
    c.args(args)
        .env("SENDLATER_SERVER", &server.url)
        .env_remove("SENDLATER_ACCOUNT")
        .env_remove("SENDLATER_TZ")
        .env_remove("SENDLATER_TOKEN")
        .env_remove("SENDLATER_NOW");
    for (k, v) in env {
        c.env(k, v);
    }
    c
}

/// Runs `watch` until it printed `lines` lines (bounded), then stops it.
fn watch_lines(mut c: Command, lines: usize) -> Vec<String> {
    let mut child = c
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn watch");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut got = Vec::new();
    while got.len() < lines {
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(line) => got.push(line),
            Err(e) => panic!("watch printed {got:?}, then {e:?}"),
        }
    }
    assert!(
        child.try_wait().expect("watch status").is_none(),
        "watch keeps running until stopped"
    );
    let _ = child.kill();
    let _ = child.wait();
    got
}

/// The `field:` line of a `get`-style printout.
fn field<'a>(out: &'a str, name: &str) -> &'a str {
    let prefix = format!("{name}:");
    out.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .unwrap_or_else(|| panic!("no {name:?} in:\n{out}"))
        .trim()
}

#[test]
fn the_readme_cli_tour_runs_end_to_end_against_a_real_server() {
    let commands = tour_commands();
    let server = start_server();
    let mut env: Vec<(String, String)> = Vec::new();
    let mut seen = Vec::new();
    for words in &commands {
        if words[0] == "export" {
            let (k, v) = words[1].split_once('=').expect("export NAME=VALUE");
            env.push((k.to_owned(), v.to_owned()));
            continue;
        }
        assert_eq!(
            words[0], "sendlater",
            "a tour line that is not sendlater: {words:?}"
        );
        let args = &words[1..];
        let command = args.join(" ");
        let c = sendlater(&server, &env, args);
        if args[0] == "watch" {
            // Every change of the tour, in order, then it keeps running (Ctrl-C).
            let events: Vec<(String, String)> = watch_lines(c, 6)
                .iter()
                .map(|l| {
                    let cells: Vec<&str> = l.split_whitespace().collect();
                    (cells[2].to_owned(), cells[3].to_owned())
                })
                .collect();
            let want = [
                ("SCHEDULED", "itm_1"),
                ("SCHEDULED", "itm_2"),
                ("UPDATED", "itm_2"),
                ("CANCELLED", "itm_1"),
                ("SCHEDULED", "itm_3"),
                ("CONVERTED_TO_NOTE", "itm_3"),
            ]
            .map(|(a, b)| (a.to_owned(), b.to_owned()));
            assert_eq!(events, want);
            seen.push("watch".to_owned());
            continue;
        }
        let r = run(c);
        assert_eq!(
            r.code,
            Some(0),
            "sendlater {command}\nstdout: {}\nstderr: {}",
            r.stdout,
            r.stderr
        );
        let out = r.stdout.as_str();
        let ticket = args
            .iter()
            .position(|a| a == "--ticket")
            .map(|i| args[i + 1].as_str());
        match (args[0].as_str(), ticket) {
            ("schedule", Some("T-1")) => {
                assert_eq!(field(out, "item"), "itm_1", "{command}");
                assert_eq!(field(out, "state"), "PENDING");
                assert_eq!(field(out, "channel"), "EMAIL");
                assert_eq!(field(out, "subject"), "Re: refund");
            }
            ("schedule", Some("T-2")) => {
                assert_eq!(field(out, "item"), "itm_2", "{command}");
                assert_eq!(field(out, "channel"), "CHAT");
                let local = field(out, "send at local");
                assert!(local.ends_with(" 09:00 Europe/Moscow"), "{out}");
            }
            ("schedule", Some("T-3")) => {
                assert_eq!(field(out, "item"), "itm_3", "{command}");
                assert_eq!(field(out, "state"), "PENDING");
            }
            ("tickets", _) => {
                // In 30 minutes comes before tomorrow 09:00.
                let r = rows(out);
                assert_eq!(r[0][0], "TICKET", "{out}");
                let tickets: Vec<&str> = r[1..].iter().map(|row| row[0]).collect();
                assert_eq!(tickets, ["T-1", "T-2"], "{out}");
            }
            ("list", _) => {
                let r = rows(out);
                let items: Vec<(&str, &str)> = r[1..].iter().map(|row| (row[0], row[4])).collect();
                assert_eq!(items, [("itm_1", "PENDING"), ("itm_2", "PENDING")], "{out}");
            }
            ("send-now", _) => {
                assert_eq!(field(out, "item"), "itm_2", "{command}");
                assert_eq!(field(out, "state"), "PENDING", "no connector runs");
                // Due now: the send time is the moment of the change.
                assert_eq!(
                    field(out, "send at").split(' ').next(),
                    Some(field(out, "updated at")),
                    "{out}"
                );
            }
            ("cancel", _) => {
                assert_eq!(field(out, "item"), "itm_1", "{command}");
                assert_eq!(field(out, "state"), "CANCELLED");
            }
            ("activity", _) => {
                let r = rows(out);
                assert_eq!(r.len(), 2, "one item converted:\n{out}");
                assert_eq!((r[1][0], r[1][4]), ("itm_3", "CONVERTED_TO_NOTE"), "{out}");
            }
            ("timeline", _) if args.iter().any(|a| a == "client") => {
                assert_eq!(out, "", "the client sees nothing of the note");
                assert!(r.stderr.contains("the timeline is empty"), "{}", r.stderr);
            }
            ("timeline", _) => {
                let r = rows(out);
                assert_eq!(r.len(), 2, "{out}");
                assert_eq!((r[1][0], r[1][4]), ("itm_3", "CONVERTED_TO_NOTE"), "{out}");
            }
            other => panic!("a tour command this test does not check: {other:?} ({command})"),
        }
        seen.push(command);
    }
    // Every step of the tour ran (the block was read as a whole).
    assert_eq!(seen.len(), 11, "{seen:#?}");
}
