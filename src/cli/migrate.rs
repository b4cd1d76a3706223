//! `sendlater migrate --from PATH_OR_URL --to PATH_OR_URL`: copies a whole store into
//! an empty one (SQLite to PostgreSQL and back). The copy itself is `store::migrate`;
//! this module reports: progress lines on stderr, the counts on stdout. A URL is
//! shown without its password.

use super::args::MigrateArgs;
use super::error::{CliError, Result};
use crate::store::migrate::{self, Options, Progress};
use crate::store::DbTarget;

/// Runs the copy.
///
/// # Errors
/// A store that cannot be used or a non-empty target (exit 64), or a failed copy
/// (exit 1); the target is left empty in both cases.
pub async fn run(args: &MigrateArgs) -> Result<()> {
    let from = DbTarget::parse(&args.from);
    let to = DbTarget::parse(&args.to);
    let options = Options {
        progress_every: args.progress_every,
    };
    let mut progress = |p: &Progress| eprintln!("migrate: {}", p.line());
    let summary = migrate::migrate(&from, &to, &options, &mut progress)
        .await
        .map_err(|e| match e {
            e if e.is_config() => CliError::Config(e.to_string()),
            e => CliError::Io {
                context: "migrate",
                source: std::io::Error::other(e.to_string()),
            },
        })?;
    let c = &summary.counts;
    let states: Vec<String> = c.items.iter().map(|(s, n)| format!("{s} {n}")).collect();
    let out = format!(
        "migrated {} to {} in {:.1} s; counts equal on both sides:\n\
         items             {}{}\n\
         events            {}\n\
         business hours    {} ({} re-resolving)\n\
         dispatch controls {}\n\
         last event seq    {}\n",
        from.display(),
        to.display(),
        summary.elapsed.as_secs_f64(),
        c.item_total(),
        if states.is_empty() {
            String::new()
        } else {
            format!(" ({})", states.join(", "))
        },
        c.events,
        c.business_hours,
        c.rewindows,
        c.controls,
        c.last_seq,
    );
    use std::io::Write;
    std::io::stdout()
        .write_all(out.as_bytes())
        .map_err(CliError::output)?;
    Ok(())
}
