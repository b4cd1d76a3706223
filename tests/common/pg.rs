//! The PostgreSQL side of the integration tests: a fresh, empty database per call on the
//! server `scripts/test.sh` starts (its URL in `SENDLATER_TEST_PG`), and which store the
//! current pass runs against (`SENDLATER_TEST_STORE`).
//!
//! A test that needs PostgreSQL fails when `SENDLATER_TEST_PG` is unset; it never skips.
//! The databases are left behind: the throwaway server is deleted with its folder after the
//! run.

use std::sync::atomic::{AtomicU64, Ordering};

use rand::RngExt;

/// The variable holding the URL of the PostgreSQL server the tests may create databases on.
pub const PG_VAR: &str = "SENDLATER_TEST_PG";

/// The variable naming the store the integration suite runs against: `postgres` or `sqlite`.
pub const STORE_VAR: &str = "SENDLATER_TEST_STORE";

/// Whether this pass of the suite runs against PostgreSQL (`SENDLATER_TEST_STORE=postgres`).
pub fn store_is_postgres() -> bool {
    std::env::var(STORE_VAR).is_ok_and(|v| v == "postgres")
}

/// The URL of the test server; panics naming the variable when it is unset.
pub fn server_url() -> String {
    match std::env::var(PG_VAR) {
        Ok(url) if !url.trim().is_empty() => url,
        _ => panic!(
            "{PG_VAR} is not set: this test needs a PostgreSQL server. Run ./scripts/test.sh \
             (it starts a throwaway one), or set {PG_VAR}=postgres://USER@HOST:PORT/postgres \
             to a server where USER may CREATE DATABASE"
        ),
    }
}

/// Creates a new, empty database on the test server and returns its URL (the server's URL
/// with the database name in place of its path). Each call gives a different database.
pub async fn fresh_database() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let base = server_url();
    let name = format!(
        "t_{}_{}_{:08x}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        rand::rng().random::<u32>()
    );
    let (client, connection) = tokio_postgres::connect(&base, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {PG_VAR}={base}: {e}"));
    let connection = tokio::spawn(connection);
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap_or_else(|e| panic!("CREATE DATABASE {name} on {base}: {e}"));
    drop(client);
    let _ = connection.await;
    let mut url =
        url::Url::parse(&base).unwrap_or_else(|e| panic!("{PG_VAR}={base} is not a URL: {e}"));
    url.set_path(&format!("/{name}"));
    url.to_string()
}

/// A PostgreSQL cluster of one test's own (initdb into a temporary folder), which the
/// test may stop and start again without disturbing the shared server of the others.
/// 127.0.0.1 only, trust authentication, a free port, durable commits (fsync and
/// synchronous_commit on). As root the server runs as the `postgres` system user (as
/// `scripts/pg.sh` does); binaries from `/usr/lib/postgresql/15/bin`, or `PGBIN`.
/// Dropping it stops the server (immediate) and deletes the folder.
pub struct PgCluster {
    dir: tempfile::TempDir,
    port: u16,
    bin: std::path::PathBuf,
}

impl PgCluster {
    /// Creates the cluster and starts it; panics with the server's log when it cannot.
    pub async fn start() -> PgCluster {
        tokio::task::spawn_blocking(Self::start_blocking)
            .await
            .expect("the cluster helper ran")
    }

    fn start_blocking() -> PgCluster {
        let bin = std::path::PathBuf::from(
            std::env::var("PGBIN").unwrap_or_else(|_| "/usr/lib/postgresql/15/bin".into()),
        );
        assert!(
            bin.join("initdb").exists(),
            "no PostgreSQL binaries in {} (install postgresql-15, run ./scripts/test.sh, or set PGBIN)",
            bin.display()
        );
        let dir = tempfile::Builder::new()
            .prefix("sendlater-pgcluster.")
            .tempdir()
            .expect("a temporary folder for the cluster");
        if is_root() {
            run(std::process::Command::new("chown")
                .arg("postgres:")
                .arg(dir.path()));
        }
        let mut cluster = PgCluster { dir, port: 0, bin };
        let data = cluster.data();
        cluster.pg_run(
            "initdb",
            &[
                "-D",
                &data,
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ],
        );
        let conf = format!("{data}/postgresql.conf");
        let mut text = std::fs::read_to_string(&conf).expect("read postgresql.conf");
        text.push_str(
            "\n# --- a test's own cluster (tests/common/pg.rs) ---\n\
             listen_addresses = '127.0.0.1'\n\
             unix_socket_directories = ''\n\
             max_connections = 40\n\
             shared_buffers = 16MB\n\
             fsync = on\n\
             synchronous_commit = on\n\
             full_page_writes = on\n",
        );
        std::fs::write(&conf, text).expect("write postgresql.conf");
        // The free port can be taken between finding it and binding it: try another.
        for attempt in 1..=3 {
            cluster.port = free_port();
            if cluster.try_start() {
                return cluster;
            }
            assert!(
                attempt < 3 && cluster.log().contains("could not bind"),
                "the test's PostgreSQL cluster did not start; its log:\n{}",
                cluster.log()
            );
        }
        unreachable!()
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// The port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the server as a crash would (`pg_ctl stop -m immediate`): no shutdown
    /// checkpoint, connections cut; returns once it is down.
    pub async fn crash(&self) {
        let (data, bin) = (self.data(), self.bin.clone());
        tokio::task::spawn_blocking(move || {
            pg_run_in(
                &bin,
                "pg_ctl",
                &["-D", &data, "-m", "immediate", "-w", "-t", "60", "stop"],
            )
        })
        .await
        .expect("pg_ctl stop ran");
    }

    /// Starts the server again on the same port (after [`PgCluster::crash`]); returns
    /// once it accepts connections.
    pub async fn restart(&self) {
        let (data, bin, port) = (self.data(), self.bin.clone(), self.port);
        let log = format!("{}/server.log", self.dir.path().display());
        let started = tokio::task::spawn_blocking(move || pg_start_in(&bin, &data, &log, port))
            .await
            .expect("pg_ctl start ran");
        assert!(
            started,
            "the cluster did not start again; its log:\n{}",
            self.log()
        );
    }

    fn data(&self) -> String {
        format!("{}/data", self.dir.path().display())
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    fn try_start(&self) -> bool {
        let log = format!("{}/server.log", self.dir.path().display());
        pg_start_in(&self.bin, &self.data(), &log, self.port)
    }

    fn pg_run(&self, tool: &str, args: &[&str]) {
        pg_run_in(&self.bin, tool, args)
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        // Immediate: the folder is deleted next.
        let _ = pg_command(&self.bin, "pg_ctl")
            .args([
                "-D",
                &self.data(),
                "-m",
                "immediate",
                "-w",
                "-t",
                "30",
                "stop",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// A PostgreSQL tool, run as the `postgres` system user when we are root.
fn pg_command(bin: &std::path::Path, tool: &str) -> std::process::Command {
    let mut c = if is_root() {
        let mut c = std::process::Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin.join(tool));
        c
    } else {
        std::process::Command::new(bin.join(tool))
    };
    c.current_dir("/");
    c
}

fn pg_run_in(bin: &std::path::Path, tool: &str, args: &[&str]) {
    run(pg_command(bin, tool).args(args));
}

/// `pg_ctl start`, waiting until it accepts connections; whether it started.
fn pg_start_in(bin: &std::path::Path, data: &str, log: &str, port: u16) -> bool {
    pg_command(bin, "pg_ctl")
        .args([
            "-D",
            data,
            "-l",
            log,
            "-o",
            &format!("-p {port}"),
            "-w",
            "-t",
            "60",
            "start",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn run(c: &mut std::process::Command) {
    let out = c.output().unwrap_or_else(|e| panic!("{c:?}: {e}"));
    assert!(
        out.status.success(),
        "{c:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A port nothing listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// What a test server on PostgreSQL acts under: node `node` holds every partition of the
/// database at `url` (the rows made and taken as a node does at start, for an hour) and
/// its trust window is open as long, so every commit of the suite's PostgreSQL pass runs
/// the fence. The status it reports stays the one node's (`cluster::SingleNode`).
pub async fn own_everything(
    url: &str,
    settings: &sendlater::cluster::ClusterSettings,
) -> sendlater::cluster::Ownership {
    let hour = std::time::Duration::from_secs(3600);
    let leases = sendlater::store::postgres::PgLeases::connect(url)
        .await
        .unwrap_or_else(|e| panic!("the lease rows of {url}: {e}"));
    leases
        .init(settings.partitions)
        .await
        .expect("the partitions are made");
    let held = leases
        .take_all(&settings.node_id, hour)
        .await
        .expect("the leases can be read")
        .expect("no other node holds the partitions of a test's database");
    owning(&settings.node_id, held, None)
}

/// What a test server acts under as node `node` holding `held`: fenced by those grants,
/// its trust window open for an hour, forwarding by `placement` (None: no routing).
pub fn owning(
    node: &str,
    held: Vec<(u32, i64)>,
    placement: Option<std::sync::Arc<sendlater::cluster::placement::Placement>>,
) -> sendlater::cluster::Ownership {
    use std::time::{Duration, Instant};
    let trust = std::sync::Arc::new(sendlater::cluster::trust::Trust::new());
    trust.renewed(Instant::now(), Duration::from_secs(3600));
    sendlater::cluster::Ownership {
        fence: sendlater::store::Fence {
            node: node.to_owned(),
            held,
            idle_limit: Duration::from_secs(60),
        },
        trust,
        view: None,
        placement,
        metrics: None,
    }
}
