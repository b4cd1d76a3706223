//! The TOML config file of `sendlater serve --config FILE` (API.md "Config file").
//!
//! Every key is optional; flags override the file. Unknown keys and bad values stop
//! start-up with a message naming the key (exit code 64): a typo in a limit must not
//! silently run with the default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::error::{CliError, Result};
use crate::cluster::{
    DEFAULT_LEASE_SECS, DEFAULT_PARTITIONS, MAX_LEASE_SECS, MAX_PARTITIONS, MIN_LEASE_SECS,
};
use crate::config::{
    Accounts, DispatchConfig, Limits, Role, TlsConfig, TokenConfig, MIN_TOKEN_CHARS,
};

/// The file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<String>,
    pub db: Option<PathBuf>,
    pub metrics_listen: Option<String>,
    pub console_hosts: Option<Vec<String>>,
    #[serde(default)]
    pub limits: LimitsFile,
    #[serde(default)]
    pub dispatch: DispatchFile,
    #[serde(default)]
    pub events: EventsFile,
    pub tls: Option<TlsFile>,
    #[serde(default)]
    pub tokens: Vec<TokenFile>,
    #[serde(default)]
    pub cluster: ClusterFile,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsFile {
    pub max_body_bytes: Option<u64>,
    pub max_recipients: Option<u64>,
    pub max_horizon_days: Option<u64>,
    pub max_pending_per_account: Option<u64>,
    pub max_batch_entries: Option<u64>,
    pub max_page_size: Option<u64>,
    pub max_message_bytes: Option<u64>,
    pub max_attachments: Option<u64>,
    pub max_url_bytes: Option<u64>,
    pub max_item_bytes: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DispatchFile {
    pub lease_secs: Option<u64>,
    pub retry_base_ms: Option<u64>,
    pub retry_cap_secs: Option<u64>,
    pub max_attempts: Option<u64>,
    pub drain_grace_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsFile {
    pub retention_days: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterFile {
    pub node_id: Option<String>,
    pub advertise: Option<String>,
    pub partitions: Option<u64>,
    pub lease_secs: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFile {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenFile {
    pub token: String,
    pub role: String,
    pub accounts: Vec<String>,
}

/// What the file configures, validated.
#[derive(Debug, Default)]
pub struct Settings {
    pub listen: Option<String>,
    pub db: Option<PathBuf>,
    pub metrics_listen: Option<SocketAddr>,
    pub limits: Limits,
    pub dispatch: DispatchConfig,
    pub event_retention_ms: Option<i64>,
    pub tls: Option<TlsConfig>,
    pub tokens: Vec<TokenConfig>,
    /// Host names the console also answers to, validated.
    pub console_hosts: Vec<String>,
    /// `[cluster]`, validated.
    pub cluster: ClusterFileSettings,
}

/// What `[cluster]` configures; flags override the node id and address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterFileSettings {
    pub node_id: Option<String>,
    pub advertise: Option<String>,
    pub partitions: u32,
    pub lease_secs: u64,
}

impl Default for ClusterFileSettings {
    fn default() -> Self {
        Self {
            node_id: None,
            advertise: None,
            partitions: DEFAULT_PARTITIONS,
            lease_secs: DEFAULT_LEASE_SECS,
        }
    }
}

/// Longest node id.
pub const MAX_NODE_ID_CHARS: usize = 128;

/// A node id as given (`--node-id`, `cluster.node_id`), trimmed: 1 to
/// [`MAX_NODE_ID_CHARS`] ASCII letters, digits and `.` `_` `:` `-`.
///
/// # Errors
/// What is wrong with it, for a message that names the flag or key.
pub fn node_id(input: &str) -> std::result::Result<String, String> {
    let id = input.trim();
    if id.is_empty() {
        return Err("must not be empty".to_owned());
    }
    if id.len() > MAX_NODE_ID_CHARS {
        return Err(format!("longer than {MAX_NODE_ID_CHARS} characters"));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')))
    {
        return Err(format!(
            "{id:?} has {c:?}; use letters, digits and . _ : - (e.g. node-1 or host:50051)"
        ));
    }
    Ok(id.to_owned())
}

/// An advertised address as given (`--advertise`, `cluster.advertise`), trimmed:
/// `HOST:PORT` with a DNS name, an IPv4 address or a bracketed IPv6 address, and a port
/// 1..=65535.
///
/// # Errors
/// What is wrong with it, for a message that names the flag or key.
pub fn advertise(input: &str) -> std::result::Result<String, String> {
    let text = input.trim();
    let bad = || {
        format!(
            "{text:?}: expected HOST:PORT that other nodes and connectors can reach, \
             e.g. node-1.internal:50051, 10.0.0.5:50051 or [fd00::5]:50051"
        )
    };
    let (host, port) = text.rsplit_once(':').ok_or_else(bad)?;
    match port.parse::<u16>() {
        Ok(p) if p > 0 => {}
        _ => return Err(bad()),
    }
    let host_ok = match host.strip_prefix('[') {
        Some(v6) => v6
            .strip_suffix(']')
            .is_some_and(|v6| v6.parse::<std::net::Ipv6Addr>().is_ok()),
        None => {
            !host.is_empty()
                && host.len() <= 253
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
                && !host.starts_with(['.', '-'])
        }
    };
    if !host_ok {
        return Err(bad());
    }
    Ok(text.to_owned())
}

fn bad(key: &str, msg: impl std::fmt::Display) -> CliError {
    CliError::Config(format!("config: {key}: {msg}"))
}

fn ranged(key: &str, v: Option<u64>, lo: u64, hi: u64, default: u64) -> Result<u64> {
    match v {
        None => Ok(default),
        Some(v) if (lo..=hi).contains(&v) => Ok(v),
        Some(v) => Err(bad(key, format!("{v} is out of range {lo}..={hi}"))),
    }
}

/// Reads and validates the file.
///
/// # Errors
/// Unreadable file, TOML syntax, unknown keys, bad values: each names the key.
pub fn load(path: &Path) -> Result<Settings> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::Config(format!("--config {}: {e}", path.display())))?;
    parse(&text).map_err(|e| match e {
        CliError::Config(m) => CliError::Config(format!("{}: {m}", path.display())),
        other => other,
    })
}

/// Parses and validates the file's text.
///
/// # Errors
/// As [`load`].
pub fn parse(text: &str) -> Result<Settings> {
    let f: FileConfig = toml::from_str(text)
        .map_err(|e| CliError::Config(format!("config: {}", e.to_string().trim_end())))?;
    let d = Limits::default();
    let limits = Limits {
        max_body_bytes: ranged(
            "limits.max_body_bytes",
            f.limits.max_body_bytes,
            1,
            64 << 20,
            d.max_body_bytes as u64,
        )? as usize,
        max_recipients: ranged(
            "limits.max_recipients",
            f.limits.max_recipients,
            1,
            10_000,
            d.max_recipients as u64,
        )? as usize,
        max_horizon_days: ranged(
            "limits.max_horizon_days",
            f.limits.max_horizon_days,
            1,
            36_500,
            d.max_horizon_days.into(),
        )? as u32,
        max_pending_per_account: ranged(
            "limits.max_pending_per_account",
            f.limits.max_pending_per_account,
            1,
            u64::MAX >> 1,
            d.max_pending_per_account,
        )?,
        max_batch_entries: ranged(
            "limits.max_batch_entries",
            f.limits.max_batch_entries,
            1,
            10_000,
            d.max_batch_entries as u64,
        )? as usize,
        max_page_size: ranged(
            "limits.max_page_size",
            f.limits.max_page_size,
            1,
            10_000,
            d.max_page_size.into(),
        )? as u32,
        max_attachments: ranged(
            "limits.max_attachments",
            f.limits.max_attachments,
            0,
            1000,
            d.max_attachments as u64,
        )? as usize,
        max_url_bytes: ranged(
            "limits.max_url_bytes",
            f.limits.max_url_bytes,
            16,
            64 * 1024,
            d.max_url_bytes as u64,
        )? as usize,
        ..d
    };
    let limits = Limits {
        max_item_bytes: ranged(
            "limits.max_item_bytes",
            f.limits.max_item_bytes,
            1024,
            256 << 20,
            Limits::item_bytes_for(limits.max_body_bytes) as u64,
        )? as usize,
        ..limits
    };
    let limits = Limits {
        max_message_bytes: ranged(
            "limits.max_message_bytes",
            f.limits.max_message_bytes,
            limits.min_message_bytes() as u64,
            1 << 30,
            d.max_message_bytes.max(limits.min_message_bytes()) as u64,
        )? as usize,
        ..limits
    };
    let dd = DispatchConfig::default();
    let dispatch = DispatchConfig {
        lease_ms: ranged(
            "dispatch.lease_secs",
            f.dispatch.lease_secs,
            1,
            86_400,
            (dd.lease_ms / 1000) as u64,
        )? as i64
            * 1000,
        retry_base_ms: ranged(
            "dispatch.retry_base_ms",
            f.dispatch.retry_base_ms,
            1,
            3_600_000,
            dd.retry_base_ms as u64,
        )? as i64,
        retry_cap_ms: ranged(
            "dispatch.retry_cap_secs",
            f.dispatch.retry_cap_secs,
            1,
            7 * 86_400,
            (dd.retry_cap_ms / 1000) as u64,
        )? as i64
            * 1000,
        max_attempts: ranged(
            "dispatch.max_attempts",
            f.dispatch.max_attempts,
            1,
            1000,
            dd.max_attempts.into(),
        )? as u32,
        drain_grace_ms: ranged(
            "dispatch.drain_grace_secs",
            f.dispatch.drain_grace_secs,
            0,
            600,
            dd.drain_grace_ms / 1000,
        )? * 1000,
    };
    let event_retention_ms = f
        .events
        .retention_days
        .map(|d| {
            ranged("events.retention_days", Some(d), 1, 3650, 7).map(|d| d as i64 * 86_400_000)
        })
        .transpose()?;
    let metrics_listen = f
        .metrics_listen
        .map(|m| {
            m.parse::<SocketAddr>()
                .map_err(|_| bad("metrics_listen", format!("{m:?} is not IP:PORT")))
        })
        .transpose()?;
    let console_hosts = f
        .console_hosts
        .unwrap_or_default()
        .iter()
        .enumerate()
        .map(|(i, h)| {
            crate::console::console_host(h).map_err(|m| bad(&format!("console_hosts[{i}]"), m))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut tokens = Vec::with_capacity(f.tokens.len());
    for (i, t) in f.tokens.into_iter().enumerate() {
        let key = |k: &str| format!("tokens[{i}].{k}");
        if t.token.trim().is_empty() {
            return Err(bad(&key("token"), "must not be empty"));
        }
        // The message names the position only: the value is a secret.
        if t.token.trim().chars().count() < MIN_TOKEN_CHARS {
            return Err(bad(
                &key("token"),
                format!(
                    "shorter than {MIN_TOKEN_CHARS} characters; make a strong one with \
                     `openssl rand -hex 32`"
                ),
            ));
        }
        let role = match t.role.as_str() {
            "backend" => Role::Backend,
            "connector" => Role::Connector,
            "admin" => Role::Admin,
            other => {
                return Err(bad(
                    &key("role"),
                    format!("{other:?} is not backend, connector or admin"),
                ))
            }
        };
        if t.accounts.is_empty() {
            return Err(bad(
                &key("accounts"),
                "list at least one account, or \"*\" for all",
            ));
        }
        let accounts = if t.accounts.iter().any(|a| a == "*") {
            Accounts::All
        } else {
            Accounts::Only(t.accounts)
        };
        if tokens.iter().any(|x: &TokenConfig| x.token == t.token) {
            return Err(bad(&key("token"), "the same token is configured twice"));
        }
        tokens.push(TokenConfig {
            token: t.token,
            role,
            accounts,
        });
    }
    let cluster = ClusterFileSettings {
        node_id: f
            .cluster
            .node_id
            .map(|id| node_id(&id).map_err(|m| bad("cluster.node_id", m)))
            .transpose()?,
        advertise: f
            .cluster
            .advertise
            .map(|a| advertise(&a).map_err(|m| bad("cluster.advertise", m)))
            .transpose()?,
        partitions: ranged(
            "cluster.partitions",
            f.cluster.partitions,
            1,
            MAX_PARTITIONS.into(),
            DEFAULT_PARTITIONS.into(),
        )? as u32,
        lease_secs: ranged(
            "cluster.lease_secs",
            f.cluster.lease_secs,
            MIN_LEASE_SECS,
            MAX_LEASE_SECS,
            DEFAULT_LEASE_SECS,
        )?,
    };
    Ok(Settings {
        listen: f.listen,
        db: f.db,
        metrics_listen,
        limits,
        dispatch,
        event_retention_ms,
        tls: f.tls.map(|t| TlsConfig {
            cert: t.cert,
            key: t.key,
        }),
        tokens,
        console_hosts,
        cluster,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The config block of the README (section "Config file"), as the README shows it:
    /// the test follows the documentation instead of a copy of it that can drift.
    fn readme_config() -> &'static str {
        let readme = include_str!("../../README.md");
        let open = "```toml\n";
        let start = readme.find(open).expect("a ```toml block in README.md") + open.len();
        let len = readme[start..].find("```").expect("the block is closed");
        &readme[start..start + len]
    }

    #[test]
    fn the_config_file_example_of_the_readme_parses_to_what_it_says() {
        let text = readme_config();
        let s = parse(text).unwrap_or_else(|e| panic!("README.md's config: {e}\n{text}"));
        assert_eq!(s.listen.as_deref(), Some("127.0.0.1:50051"));
        assert_eq!(s.db.as_deref(), Some(Path::new("./sendlater.db")));
        assert_eq!(
            s.metrics_listen.map(|a| a.to_string()).as_deref(),
            Some("127.0.0.1:9464")
        );
        assert_eq!(s.limits.max_body_bytes, 262_144);
        assert_eq!(s.limits.max_recipients, 100);
        assert_eq!(s.limits.max_horizon_days, 1826);
        assert_eq!(s.limits.max_pending_per_account, 1_000_000);
        assert_eq!(s.limits.max_batch_entries, 1000);
        assert_eq!(s.limits.max_page_size, 1000);
        assert_eq!(s.limits.max_message_bytes, 4_194_304);
        assert_eq!(s.dispatch.lease_ms, 30_000);
        assert_eq!(s.dispatch.retry_base_ms, 1000);
        assert_eq!(s.dispatch.retry_cap_ms, 600_000);
        assert_eq!(s.dispatch.max_attempts, 10);
        assert_eq!(s.dispatch.drain_grace_ms, 5_000);
        assert_eq!(s.event_retention_ms, Some(7 * 86_400_000));
        let tls = s.tls.as_ref().expect("[tls]");
        assert_eq!(
            (tls.cert.as_path(), tls.key.as_path()),
            (Path::new("server.pem"), Path::new("server.key"))
        );
        assert_eq!(s.tokens.len(), 1);
        assert_eq!(s.tokens[0].role, Role::Backend);
        assert_eq!(s.tokens[0].accounts, Accounts::Only(vec!["acme".into()]));
        assert_eq!(
            s.cluster,
            ClusterFileSettings {
                node_id: Some("node-1".into()),
                advertise: Some("node-1.internal:50051".into()),
                partitions: 64,
                lease_secs: 10,
            }
        );
    }

    #[test]
    fn the_cluster_bounds_are_accepted_and_absent_keys_are_the_defaults() {
        let s = parse("[cluster]\npartitions = 1\nlease_secs = 2").unwrap();
        assert_eq!(
            (s.cluster.partitions, s.cluster.lease_secs),
            (1, MIN_LEASE_SECS)
        );
        let s = parse("[cluster]\npartitions = 4096\nlease_secs = 600").unwrap();
        assert_eq!(
            (s.cluster.partitions, s.cluster.lease_secs),
            (MAX_PARTITIONS, MAX_LEASE_SECS)
        );
        assert_eq!(parse("").unwrap().cluster, ClusterFileSettings::default());
        assert_eq!(
            parse("[cluster]").unwrap().cluster,
            ClusterFileSettings {
                node_id: None,
                advertise: None,
                partitions: 64,
                lease_secs: 10,
            }
        );
    }

    #[test]
    fn several_tokens_and_all_accounts_parse() {
        let s = parse(
            r#"
[[tokens]]
token = "change-me-to-the-output-of-openssl-rand-hex-32"
role = "backend"
accounts = ["acme"]

[[tokens]]
token = "a-connector-token-of-32-characters"
role = "connector"
accounts = ["*"]
"#,
        )
        .expect("valid");
        assert_eq!(s.tokens.len(), 2);
        assert_eq!(s.tokens[0].accounts, Accounts::Only(vec!["acme".into()]));
        assert_eq!(s.tokens[1].role, Role::Connector);
        assert_eq!(s.tokens[1].accounts, Accounts::All);
    }

    #[test]
    fn the_item_limit_follows_the_body_limit_unless_set() {
        let s = parse("[limits]\nmax_body_bytes = 1000").unwrap();
        assert_eq!(s.limits.max_item_bytes, 2000 + 64 * 1024);
        let s = parse("[limits]\nmax_item_bytes = 5000\nmax_attachments = 3\nmax_url_bytes = 100")
            .unwrap();
        assert_eq!(
            (
                s.limits.max_item_bytes,
                s.limits.max_attachments,
                s.limits.max_url_bytes
            ),
            (5000, 3, 100)
        );
        let e = parse("[limits]\nmax_url_bytes = 1")
            .unwrap_err()
            .to_string();
        assert!(e.contains("limits.max_url_bytes"), "{e}");
    }

    #[test]
    fn an_empty_file_means_every_default() {
        let s = parse("").unwrap();
        assert_eq!(s.limits.max_body_bytes, 262_144);
        assert!(s.tokens.is_empty());
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_key() {
        for (text, key) in [
            ("lisen = \"x\"", "lisen"),
            ("[limits]\nmax_body = 5", "max_body"),
            ("[limits]\nmax_recipients = 0", "limits.max_recipients"),
            ("[limits]\nmax_recipients = \"many\"", "max_recipients"),
            ("[dispatch]\nmax_attempts = 0", "dispatch.max_attempts"),
            ("metrics_listen = \"nowhere\"", "metrics_listen"),
            ("[cluster]\npartitions = 0", "cluster.partitions"),
            ("[cluster]\npartitions = 4097", "cluster.partitions"),
            ("[cluster]\npartitions = -1", "partitions"),
            ("[cluster]\nlease_secs = 1", "cluster.lease_secs"),
            ("[cluster]\nlease_secs = 601", "cluster.lease_secs"),
            ("[cluster]\nnode_id = \"a b\"", "cluster.node_id"),
            ("[cluster]\nnode_id = \"\"", "cluster.node_id"),
            ("[cluster]\nadvertise = \"nowhere\"", "cluster.advertise"),
            ("[cluster]\nadvertise = \"h:0\"", "cluster.advertise"),
            ("[cluster]\nleases = 5", "leases"),
            ("console_hosts = [\"a/b\"]", "console_hosts[0]"),
            (
                "console_hosts = [\"ok.example\", \"x:0\"]",
                "console_hosts[1]",
            ),
            (
                "[[tokens]]\ntoken = \"0123456789abcdef\"\nrole = \"root\"\naccounts = [\"*\"]",
                "tokens[0].role",
            ),
            (
                "[[tokens]]\ntoken = \"0123456789abcdef\"\nrole = \"admin\"\naccounts = []",
                "tokens[0].accounts",
            ),
            (
                "[[tokens]]\ntoken = \"\"\nrole = \"admin\"\naccounts = [\"*\"]",
                "tokens[0].token",
            ),
            (
                "[[tokens]]\ntoken = \"0123456789abcdef\"\nrole = \"admin\"\naccounts = [\"*\"]\n\
                 [[tokens]]\ntoken = \"0123456789abcde\"\nrole = \"admin\"\naccounts = [\"*\"]",
                "tokens[1].token",
            ),
        ] {
            let err = parse(text).expect_err(text);
            assert!(err.to_string().contains(key), "{text:?} -> {err}");
            assert!(matches!(err, CliError::Config(_)), "{text:?} -> {err:?}");
            assert_eq!(err.exit_code(), 64, "{text:?} -> {err}");
        }
    }
}
