//! The PostgreSQL test infrastructure itself: the server `scripts/test.sh` starts (URL in
//! `SENDLATER_TEST_PG`) commits durably, `common::pg::fresh_database()` gives a new empty
//! database per call, and a test needing PostgreSQL fails, never skips, without the server.
mod common;

use common::pg::{fresh_database, PG_VAR};
use tokio_postgres::{Client, NoTls};

async fn connect(url: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
    tokio::spawn(connection);
    client
}

/// The database name at the end of a URL's path.
fn database_of(url: &str) -> String {
    url::Url::parse(url)
        .expect("a URL")
        .path()
        .trim_start_matches('/')
        .to_string()
}

async fn tables_in_public(client: &Client) -> i64 {
    client
        .query_one(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'",
            &[],
        )
        .await
        .expect("count tables")
        .get(0)
}

#[tokio::test]
async fn a_fresh_database_is_empty_and_takes_a_table() {
    let url = fresh_database().await;
    let client = connect(&url).await;
    let current: String = client
        .query_one("SELECT current_database()", &[])
        .await
        .expect("current_database")
        .get(0);
    assert_eq!(current, database_of(&url), "the URL names the new database");
    assert_ne!(current, "postgres");
    assert_eq!(
        tables_in_public(&client).await,
        0,
        "a fresh database has no tables"
    );

    client
        .batch_execute("CREATE TABLE items (id bigint PRIMARY KEY, body text NOT NULL)")
        .await
        .expect("create table");
    client
        .execute("INSERT INTO items VALUES ($1, $2)", &[&7_i64, &"hello"])
        .await
        .expect("insert");
    let body: String = client
        .query_one("SELECT body FROM items WHERE id = $1", &[&7_i64])
        .await
        .expect("select")
        .get(0);
    assert_eq!(body, "hello");
    assert_eq!(tables_in_public(&client).await, 1);
}

#[tokio::test]
async fn the_test_server_commits_durably() {
    let client = connect(&fresh_database().await).await;
    for setting in ["fsync", "synchronous_commit", "full_page_writes"] {
        let value: String = client
            .query_one(&format!("SHOW {setting}"), &[])
            .await
            .unwrap_or_else(|e| panic!("SHOW {setting}: {e}"))
            .get(0);
        assert_eq!(value, "on", "{setting} on the test server");
    }
}

#[tokio::test]
async fn two_calls_give_two_different_databases() {
    let (first, second) = (fresh_database().await, fresh_database().await);
    assert_ne!(first, second);
    assert_ne!(database_of(&first), database_of(&second));

    let a = connect(&first).await;
    a.batch_execute("CREATE TABLE only_in_first (id bigint)")
        .await
        .expect("create table in the first");
    let b = connect(&second).await;
    assert_eq!(
        tables_in_public(&b).await,
        0,
        "the second does not see the first's table"
    );
    assert_eq!(tables_in_public(&a).await, 1);
}

#[test]
fn without_sendlater_test_pg_a_test_needing_postgresql_fails_naming_the_variable() {
    // This test binary again, running one test that needs PostgreSQL, without the variable.
    let out = std::process::Command::new(std::env::current_exe().expect("own path"))
        .args(["--exact", "a_fresh_database_is_empty_and_takes_a_table"])
        .env_remove(PG_VAR)
        .output()
        .expect("run the test binary");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "it must fail, not skip:\n{text}");
    assert!(text.contains("1 failed"), "{text}");
    assert!(
        text.contains("SENDLATER_TEST_PG is not set") && text.contains("scripts/test.sh"),
        "the failure names the variable and the script:\n{text}"
    );
}
