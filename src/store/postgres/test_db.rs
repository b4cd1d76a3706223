//! A fresh PostgreSQL database per test, on the server `SENDLATER_TEST_PG` names
//! (e.g. `postgres://postgres@127.0.0.1:55433/postgres`); dropped when the test ends.
//! A test that needs PostgreSQL fails, never skips, when the variable is unset.

use std::sync::atomic::{AtomicU64, Ordering};

use tokio_postgres::{Client, Config, NoTls};

/// The variable naming the test server.
pub const ENV: &str = "SENDLATER_TEST_PG";

/// A database created for one test, with a connection to it.
pub struct TestDb {
    pub client: Client,
    pub name: String,
    admin: Config,
}

/// The test server's URL; panics with what to do when it is not set.
pub fn server_url() -> String {
    std::env::var(ENV).unwrap_or_else(|_| {
        panic!(
            "{ENV} is not set: the PostgreSQL tests need a server, e.g. start one with \
             `/work/shared/peers/pg-boss/start-pg.sh /tmp/pg 55433` (or scripts/test.sh) and \
             export {ENV}=postgres://postgres@127.0.0.1:55433/postgres"
        )
    })
}

async fn connect(cfg: &Config) -> Client {
    let (client, conn) = cfg
        .connect(NoTls)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {ENV} ({:?}): {e}", cfg.get_dbname()));
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

impl TestDb {
    /// Creates a database with a name no other test uses, and connects to it.
    pub async fn new() -> TestDb {
        static N: AtomicU64 = AtomicU64::new(0);
        let admin: Config = server_url()
            .parse()
            .unwrap_or_else(|e| panic!("{ENV} is not a PostgreSQL URL: {e}"));
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let name = format!(
            "sendlater_test_{}_{}_{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        );
        let a = connect(&admin).await;
        a.batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
        let mut cfg = admin.clone();
        cfg.dbname(&name);
        let client = connect(&cfg).await;
        TestDb {
            client,
            name,
            admin,
        }
    }

    /// The URL of this database (the server's URL with its name).
    pub fn url(&self) -> String {
        let base = server_url();
        let base = base.split('?').next().unwrap_or(&base).to_owned();
        let head = base.rsplit_once('/').map_or(base.as_str(), |(h, _)| h);
        format!("{head}/{}", self.name)
    }

    /// Another connection to the same database.
    pub async fn connect(&self) -> Client {
        let mut cfg = self.admin.clone();
        cfg.dbname(&self.name);
        connect(&cfg).await
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // Dropped from a test's runtime, which cannot be blocked on: a thread of its own.
        let admin = self.admin.clone();
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let Ok((c, conn)) = admin.connect(NoTls).await else {
                    return;
                };
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                let _ = c
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await;
            });
        })
        .join();
    }
}
