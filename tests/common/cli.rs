//! The real `sendlater` binary in tests: a run of a command and what it printed, and
//! `sendlater serve` as a process of its own on a free port.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// What a run of the binary printed and how it exited.
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn of(output: Output) -> Run {
        Run {
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// Asserts success and returns stdout.
    pub fn ok(self) -> String {
        assert_eq!(
            self.code,
            Some(0),
            "stdout: {}\nstderr: {}",
            self.stdout,
            self.stderr
        );
        self.stdout
    }

    /// Asserts success and returns stdout parsed as JSON.
    pub fn json(self) -> serde_json::Value {
        let out = self.ok();
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
    }
}

/// Runs `command` to its end.
pub fn run(mut command: Command) -> Run {
    Run::of(command.output().expect("the binary runs"))
}

/// Runs `command` to its end off the runtime's thread, so an in-process server keeps
/// serving meanwhile.
pub async fn run_off_runtime(mut command: Command) -> Run {
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("the runner thread")
        .expect("the binary runs");
    Run::of(output)
}

/// The rows of a table printout (header first), split into cells.
pub fn rows(out: &str) -> Vec<Vec<&str>> {
    out.lines()
        .map(|l| l.split_whitespace().collect())
        .collect()
}

/// `sendlater serve` as a process of its own; killed (and reaped) when dropped.
pub struct Serve {
    pub child: Child,
    /// The address it listens on, as it said.
    pub addr: String,
    /// `http://` and `addr`.
    pub url: String,
    /// A temporary folder (its database, its config) removed once the server is gone.
    dir: Option<tempfile::TempDir>,
}

impl Serve {
    /// `sendlater serve` on `db`, on a free port, without the console, logging at info
    /// level: more arguments and environment may follow before [`Serve::spawn`].
    pub fn command(db: &Path) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_sendlater"));
        command
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--console-listen",
                "off",
            ])
            .arg("--db")
            .arg(db)
            .env("RUST_LOG", "info");
        command
    }

    /// Starts `command` (from [`Serve::command`]) and waits until the server says where
    /// it listens.
    pub fn spawn(mut command: Command) -> Serve {
        let mut child = command
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn sendlater serve");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("sendlater is serving addr=").nth(1) {
                    let addr = rest.split_whitespace().next().unwrap_or_default();
                    let _ = tx.send(addr.to_owned());
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the server says where it listens");
        Serve {
            child,
            url: format!("http://{addr}"),
            addr,
            dir: None,
        }
    }

    /// The server, keeping `dir` until it is gone.
    pub fn keeping(mut self, dir: tempfile::TempDir) -> Serve {
        self.dir = Some(dir);
        self
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
