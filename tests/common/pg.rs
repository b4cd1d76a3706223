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
