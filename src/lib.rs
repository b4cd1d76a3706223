//! sendlater: schedule helpdesk replies and new tickets to be sent later.
//!
//! Map of the crate (see DESIGN.md):
#![forbid(unsafe_code)]

pub mod cli;
/// Wall-clock time behind a trait; `ManualClock` for tests.
pub mod clock;
/// Several nodes: partitions, their leases and the trust window.
pub mod cluster;
/// Validated configuration: limits, dispatch tuning, storage.
pub mod config;
/// Connector processes: the Dispatch stream runner, email (SMTP) and chat (webhook).
pub mod connector;
/// The staff console: HTML pages over the engine, on their own address.
pub mod console;
/// Hands due items to connectors; records their answers.
pub mod dispatch;
/// Items, states, transitions, validation, activity rules (pure).
pub mod domain;
/// Ties domain, store and wheel together; drives the wheel.
pub mod engine;
/// Prometheus metrics.
pub mod metrics;
/// Generated protobuf/gRPC code.
pub mod pb;
/// Start and stop the service.
pub mod server;
/// gRPC services: Scheduler, Dispatch, conversions.
pub mod service;
/// SQLite: schema, group-commit writer, read pool.
pub mod store;
/// The hierarchical timing wheel (pure, synchronous).
pub mod wheel;

/// A proptest failure is saved (proptest's default `SourceParallel` persistence) to
/// `proptest-regressions/<module path>.txt` and replayed first by every later run: those
/// files are committed, so a failure seen once, in CI or elsewhere, can be replayed.
#[cfg(test)]
mod proptest_regressions {
    use std::path::{Path, PathBuf};

    /// The `.rs` files under `dir` whose text runs proptests.
    fn proptest_sources(dir: &Path, found: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("read src") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                proptest_sources(&path, found);
            } else if path.extension().is_some_and(|e| e == "rs")
                && std::fs::read_to_string(&path)
                    .expect("read source")
                    .contains(concat!("proptest", "! {"))
            {
                found.push(path);
            }
        }
    }

    #[test]
    fn every_proptest_module_has_its_regressions_file_and_git_keeps_them() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let src = root.join("src");
        let mut sources = Vec::new();
        proptest_sources(&src, &mut sources);
        assert!(sources.len() >= 3, "proptest modules: {sources:?}");
        for source in sources {
            let rel = source.strip_prefix(&src).expect("under src");
            let file = root
                .join("proptest-regressions")
                .join(rel)
                .with_extension("txt");
            assert!(
                file.is_file(),
                "{} runs proptests but {} is missing: create it (proptest's header) and commit it",
                rel.display(),
                file.display()
            );
        }
        let ignore = std::fs::read_to_string(root.join(".gitignore")).expect(".gitignore");
        assert!(
            !ignore.lines().any(|l| l.contains("proptest")),
            ".gitignore must not hide proptest-regressions/: {ignore}"
        );
    }
}
