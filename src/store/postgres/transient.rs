//! Which PostgreSQL errors a caller should retry (UNAVAILABLE), not report as internal.

use tokio_postgres::error::SqlState;

/// Whether `e` means "try again", on this node or another:
/// - no SQLSTATE: the connection is lost or cannot be made;
/// - class 08 (connection exception), 57P01..57P03 (the server shutting down or
///   starting), 25P03 (the session ended by `idle_in_transaction_session_timeout`, as a
///   node stopped or cut off mid-group), 40001 / 40P01 (serialization failure, deadlock);
/// - a unique violation on a key sendlater allocates (`items_pkey`, `events_pkey`): only
///   another writer of the same rows causes it, i.e. this node lost its partitions and
///   another owner wrote since (its fence refuses the commit anyway).
pub fn is_transient(e: &tokio_postgres::Error) -> bool {
    let Some(code) = e.code() else {
        return true;
    };
    if code.code().starts_with("08") {
        return true;
    }
    if [
        SqlState::ADMIN_SHUTDOWN,
        SqlState::CRASH_SHUTDOWN,
        SqlState::CANNOT_CONNECT_NOW,
        SqlState::IDLE_IN_TRANSACTION_SESSION_TIMEOUT,
        SqlState::T_R_SERIALIZATION_FAILURE,
        SqlState::T_R_DEADLOCK_DETECTED,
    ]
    .contains(code)
    {
        return true;
    }
    *code == SqlState::UNIQUE_VIOLATION
        && e.as_db_error()
            .and_then(|d| d.constraint())
            .is_some_and(|c| c == "items_pkey" || c == "events_pkey")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::postgres::test_db::TestDb;

    async fn raised(db: &TestDb, code: &str, constraint: &str) -> tokio_postgres::Error {
        db.client
            .batch_execute(&format!(
                "DO $$ BEGIN RAISE EXCEPTION 'raised' USING ERRCODE = '{code}', \
                 CONSTRAINT = '{constraint}'; END $$"
            ))
            .await
            .expect_err("raised")
    }

    #[tokio::test]
    async fn lost_sessions_shutdowns_and_another_writers_ids_are_transient_the_rest_is_not() {
        let db = TestDb::new().await;
        for code in ["08006", "57P01", "57P03", "25P03", "40001", "40P01"] {
            assert!(is_transient(&raised(&db, code, "").await), "{code}");
        }
        assert!(is_transient(&raised(&db, "23505", "items_pkey").await));
        assert!(is_transient(&raised(&db, "23505", "events_pkey").await));
        // A duplicate request id is the caller's business, not a retry.
        assert!(!is_transient(
            &raised(&db, "23505", "items_by_request").await
        ));
        assert!(!is_transient(&raised(&db, "22012", "").await));
        assert!(!is_transient(&raised(&db, "42P01", "").await));
    }
}
