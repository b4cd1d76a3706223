//! The PostgreSQL engine behind the store's contract (see `store`).
//!
//! Its SQL: the schema and its migrations ([`schema`]), and the statements every
//! operation runs ([`rows`]), with the meaning of the SQLite engine's. Rows hold the
//! same encodings as SQLite's (`store::codec`): content, timing and event snapshots are
//! the same bytes, enums the same integers. Item ids and event sequence numbers are
//! allocated by sendlater (no sequence on the hot path), per partition once the
//! database has partitions, so several nodes write it at once ([`scope`]: a store loads,
//! writes and prunes only its own partitions' rows, and refuses a write for another's).

pub(crate) mod dump;
pub mod lease;
// A few statements are used by tests and the migration only.
#[allow(dead_code)]
pub(crate) mod rows;
pub(crate) mod schema;
pub(crate) mod scope;
mod store;
pub(crate) mod transient;
mod tx;

#[cfg(test)]
pub(crate) mod test_db;
#[cfg(test)]
mod tests;

pub use lease::PgLeases;
pub use store::PgStore;
