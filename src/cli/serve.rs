//! `sendlater serve`: validate the flags into a [`ServerConfig`], start the service,
//! wait for SIGINT/SIGTERM, stop gracefully.
//!
//! [`serve_config`] checks everything before [`run`] binds a port, so a configuration
//! that cannot work never starts listening. Shutdown drains in-flight
//! RPCs, commits and closes streams ([`RunningServer::shutdown`]); if that takes longer
//! than [`SHUTDOWN_GRACE`], we say so and exit anyway.
//!
//! [`RunningServer::shutdown`]: crate::server::RunningServer::shutdown

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use super::args::{ServeArgs, SyncMode};
use super::config_file;
use super::error::{CliError, Result};
use super::signal;
use crate::cluster::ClusterSettings;
use crate::config::{ServerConfig, Synchronous};
use crate::server;

/// How long a graceful shutdown may take before the process exits regardless.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// Validates `serve`'s flags, before any port is bound.
///
/// # Errors
/// A `--listen` that is not `IP:PORT`, `[IPv6]:PORT` or `localhost:PORT`; a non-loopback
/// `--listen` without `--insecure` (no auth tokens exist yet, so the service is open);
/// an empty `--db`.
pub fn serve_config(args: &ServeArgs) -> Result<ServerConfig> {
    let file = match &args.config {
        Some(path) => config_file::load(path)?,
        None => config_file::Settings::default(),
    };
    let listen_text = args
        .listen
        .clone()
        .or(file.listen.clone())
        .unwrap_or_else(|| "127.0.0.1:50051".to_owned());
    let listen = parse_listen(&listen_text)?;
    if !is_loopback(listen.ip()) && !args.insecure && file.tokens.is_empty() {
        return Err(CliError::Config(format!(
            "--listen {listen}: not a loopback address, and no auth tokens are configured, \
             so anyone reaching the port could read and send every account's messages; \
             configure [[tokens]] in --config, listen on 127.0.0.1 / ::1 / localhost, \
             or pass --insecure to accept that"
        )));
    }
    let db = args
        .db
        .clone()
        .or(file.db.clone())
        .unwrap_or_else(|| "./sendlater.db".into());
    if db.as_os_str().is_empty() {
        return Err(CliError::Config("--db: must name a file".to_owned()));
    }
    let mut config = ServerConfig::new(listen, db);
    config.limits = file.limits;
    config.dispatch = file.dispatch;
    if let Some(ms) = file.event_retention_ms {
        config.event_retention_ms = ms;
    }
    config.tokens = file.tokens;
    config.tls = file.tls;
    config.metrics_listen =
        match &args.metrics_listen {
            Some(m) => Some(m.parse().map_err(|_| {
                CliError::Config(format!("--metrics-listen {m:?}: expected IP:PORT"))
            })?),
            None => file.metrics_listen,
        };
    config.console_listen = match args.console_listen.as_deref().map(str::trim) {
        Some("off") | Some("") => None,
        Some(text) => Some(parse_listen(text).map_err(|_| {
            CliError::Config(format!(
                "--console-listen {text:?}: expected IP:PORT, [IPv6]:PORT, localhost:PORT or off"
            ))
        })?),
        None if is_loopback(listen.ip()) => {
            config.console_optional = true;
            Some(SocketAddr::from(([127, 0, 0, 1], 8080)))
        }
        None => None,
    };
    if let Some(c) = config.console_listen {
        if !is_loopback(c.ip()) && !args.insecure && config.tokens.is_empty() {
            return Err(CliError::Config(format!(
                "--console-listen {c}: not a loopback address, and no auth tokens are \
                 configured, so anyone reaching the port could read and send every \
                 account's messages; configure [[tokens]] in --config, use a loopback \
                 address, or pass --insecure to accept that"
            )));
        }
        if !is_loopback(c.ip()) && !args.insecure && config.tls.is_none() {
            return Err(CliError::Config(format!(
                "--console-listen {c}: not a loopback address, and no [tls] is configured, \
                 so the console's tokens and session cookies would cross the network in \
                 clear text; configure [tls] in --config, use a loopback address, or pass \
                 --insecure to accept that"
            )));
        }
    }
    config.console_hosts = if args.console_hosts.is_empty() {
        file.console_hosts
    } else {
        args.console_hosts
            .iter()
            .map(|h| {
                crate::console::console_host(h)
                    .map_err(|m| CliError::Config(format!("--console-host {m}")))
            })
            .collect::<Result<Vec<_>>>()?
    };
    config.cluster = cluster_settings(args, &file.cluster, listen)?;
    config.synchronous = match args.sync {
        SyncMode::Full => Synchronous::Full,
        SyncMode::Normal => Synchronous::Normal,
    };
    Ok(config)
}

/// This node's cluster settings: `--node-id` / `--advertise` over `[cluster]`'s, with
/// the defaults `HOSTNAME:PORT` and the listen address (the host name in place of a
/// wildcard address such as 0.0.0.0, which no other node could reach).
fn cluster_settings(
    args: &ServeArgs,
    file: &config_file::ClusterFileSettings,
    listen: SocketAddr,
) -> Result<ClusterSettings> {
    let node_id = match &args.node_id {
        Some(id) => {
            config_file::node_id(id).map_err(|m| CliError::Config(format!("--node-id: {m}")))?
        }
        None => file
            .node_id
            .clone()
            .unwrap_or_else(|| crate::config::default_node_id(listen)),
    };
    let advertise = match &args.advertise {
        Some(a) => {
            config_file::advertise(a).map_err(|m| CliError::Config(format!("--advertise {m}")))?
        }
        None => match &file.advertise {
            Some(a) => a.clone(),
            None if listen.ip().is_unspecified() => {
                format!("{}:{}", crate::config::host_name(), listen.port())
            }
            None => listen.to_string(),
        },
    };
    Ok(ClusterSettings {
        node_id,
        advertise,
        partitions: file.partitions,
        lease_secs: file.lease_secs,
    })
}

/// `IP:PORT`, `[IPv6]:PORT`, or `localhost:PORT` (taken as 127.0.0.1, without DNS, so
/// "localhost" can never resolve to something public).
fn parse_listen(input: &str) -> Result<SocketAddr> {
    let bad = || {
        CliError::Config(format!(
            "--listen {input:?}: expected IP:PORT, [IPv6]:PORT or localhost:PORT, \
             e.g. 127.0.0.1:50051"
        ))
    };
    if let Ok(addr) = input.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let (host, port) = input.rsplit_once(':').ok_or_else(bad)?;
    if !host.eq_ignore_ascii_case("localhost") {
        return Err(bad());
    }
    let port = port.parse::<u16>().map_err(|_| bad())?;
    Ok(SocketAddr::from(([127, 0, 0, 1], port)))
}

/// 127.0.0.0/8, ::1, and ::ffff:127.x.y.z.
fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// Runs the service until the process is asked to stop.
///
/// # Errors
/// The service cannot start (storage, bind), a signal handler cannot be installed, or
/// the shutdown fails or overruns [`SHUTDOWN_GRACE`].
pub async fn run(config: ServerConfig) -> Result<()> {
    let listen = config.listen;
    let db = config.db_path.clone();
    if !is_loopback(listen.ip()) && config.tokens.is_empty() {
        tracing::warn!(%listen, "listening beyond loopback without auth tokens (--insecure)");
    }
    if let crate::store::DbTarget::Postgres(url) =
        crate::store::DbTarget::parse(&db.to_string_lossy())
    {
        return run_node(config, &url).await;
    }
    let running = server::start(config).await?;
    tracing::info!(
        addr = %running.local_addr(),
        db = %crate::store::DbTarget::parse(&db.to_string_lossy()).display(),
        "sendlater is serving"
    );

    let waited = tokio::select! {
        w = signal::shutdown() => w,
        reason = running.failed() => {
            // The store's writer died: nothing can be written. Exit non-zero so a
            // supervisor restarts the process; the file holds everything answered OK.
            let _ = tokio::time::timeout(SHUTDOWN_GRACE, running.shutdown()).await;
            return Err(CliError::Server(server::ServerError::Other(format!(
                "the service stopped working: {reason}"
            ))));
        }
    };
    if let Err(error) = &waited {
        // Without signal handlers we cannot wait for a stop request: stop now rather
        // than run unstoppable.
        tracing::error!(%error, "cannot install signal handlers; stopping");
    }

    match tokio::time::timeout(SHUTDOWN_GRACE, running.shutdown()).await {
        Ok(Ok(())) => {
            tracing::info!("stopped");
            waited.map_err(|source| CliError::Io {
                context: "cannot install signal handlers",
                source,
            })
        }
        Ok(Err(error)) => Err(error.into()),
        Err(_elapsed) => {
            tracing::error!(
                grace_secs = SHUTDOWN_GRACE.as_secs(),
                "graceful shutdown did not finish in time"
            );
            Err(CliError::ShutdownTimeout(SHUTDOWN_GRACE.as_secs()))
        }
    }
}

/// A node on PostgreSQL (`cluster::node`): it serves its fair share of the partitions
/// (and forwards calls for the others' accounts) until asked to stop (its partitions
/// are released) or until it loses some (exit non-zero: the supervisor restarts it).
async fn run_node(config: ServerConfig, url: &str) -> Result<()> {
    let (tx, rx) = tokio::sync::oneshot::channel::<std::io::Error>();
    let stop = async move {
        if let Err(e) = signal::shutdown().await {
            let _ = tx.send(e);
        }
    };
    let ended = crate::cluster::node::run(config, url, stop).await?;
    if let Ok(error) = rx.await {
        tracing::error!(%error, "cannot install signal handlers; stopped");
        return Err(CliError::Io {
            context: "cannot install signal handlers",
            source: error,
        });
    }
    match ended {
        crate::cluster::node::Ended::Stopped => {
            tracing::info!("stopped");
            Ok(())
        }
        crate::cluster::node::Ended::Lost(why) => Err(CliError::Server(
            server::ServerError::Other(format!("this node lost its partitions: {why}")),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::args::{Args, Command};
    use clap::Parser;

    fn serve_args(listen: &str, insecure: bool) -> ServeArgs {
        let mut argv = vec!["sendlater", "serve", "--listen", listen];
        if insecure {
            argv.push("--insecure");
        }
        match Args::try_parse_from(argv)
            .expect("clap accepts serve")
            .command
        {
            Command::Serve(args) => args,
            other => panic!("not serve: {other:?}"),
        }
    }

    #[test]
    fn serve_listens_on_loopback_without_insecure() {
        for (listen, want) in [
            ("127.0.0.1:50051", "127.0.0.1:50051"),
            ("127.1.2.3:0", "127.1.2.3:0"),
            ("[::1]:50051", "[::1]:50051"),
            ("localhost:7000", "127.0.0.1:7000"),
            ("LOCALHOST:7000", "127.0.0.1:7000"),
        ] {
            let config = serve_config(&serve_args(listen, false))
                .unwrap_or_else(|e| panic!("{listen} refused: {e}"));
            assert_eq!(config.listen.to_string(), want);
        }
    }

    #[test]
    fn serve_refuses_a_public_address_unless_insecure_and_says_so() {
        for listen in ["0.0.0.0:50051", "[::]:50051", "192.168.1.5:50051"] {
            let err = serve_config(&serve_args(listen, false)).expect_err(listen);
            assert_eq!(err.exit_code(), 64);
            assert!(err.to_string().contains("--insecure"), "{err}");
            assert!(serve_config(&serve_args(listen, true)).is_ok(), "{listen}");
        }
    }

    #[test]
    fn serve_refuses_an_unreadable_listen_address_naming_the_flag() {
        for listen in ["50051", "example.com:50051", "localhost:http", "1.2.3.4"] {
            let err = serve_config(&serve_args(listen, true)).expect_err(listen);
            assert_eq!(err.exit_code(), 64);
            assert!(err.to_string().starts_with("--listen"), "{err}");
        }
    }

    #[test]
    fn serve_defaults_are_the_embedded_ones() {
        let args = match Args::try_parse_from(["sendlater", "serve"])
            .expect("clap")
            .command
        {
            Command::Serve(args) => args,
            other => panic!("not serve: {other:?}"),
        };
        let config = serve_config(&args).expect("defaults are valid");
        assert_eq!(config.listen.to_string(), "127.0.0.1:50051");
        assert_eq!(config.db_path, std::path::PathBuf::from("./sendlater.db"));
        assert_eq!(config.synchronous, Synchronous::Full);
    }

    fn serve_argv(argv: &[&str]) -> ServeArgs {
        let mut all = vec!["sendlater", "serve"];
        all.extend_from_slice(argv);
        match Args::try_parse_from(all).expect("clap").command {
            Command::Serve(args) => args,
            other => panic!("not serve: {other:?}"),
        }
    }

    #[test]
    fn the_console_is_on_by_default_only_beside_a_loopback_listener() {
        let console = |argv: &[&str]| serve_config(&serve_argv(argv)).map(|c| c.console_listen);
        let on = Some("127.0.0.1:8080".parse().unwrap());
        assert_eq!(console(&[]).unwrap(), on);
        // The default may be taken: optional; an address asked for is not.
        assert!(serve_config(&serve_argv(&[])).unwrap().console_optional);
        assert!(
            !serve_config(&serve_argv(&["--console-listen", "127.0.0.1:9000"]))
                .unwrap()
                .console_optional
        );
        assert_eq!(console(&["--listen", "localhost:6000"]).unwrap(), on);
        assert_eq!(
            console(&["--listen", "0.0.0.0:50051", "--insecure"]).unwrap(),
            None
        );
        assert_eq!(console(&["--console-listen", "off"]).unwrap(), None);
        assert_eq!(
            console(&["--console-listen", "127.0.0.1:9000"]).unwrap(),
            Some("127.0.0.1:9000".parse().unwrap())
        );
        // Beyond loopback without tokens: refused, naming the flag, unless --insecure.
        let err = console(&["--console-listen", "0.0.0.0:8080"]).unwrap_err();
        assert!(
            err.to_string().contains("--console-listen 0.0.0.0:8080"),
            "{err}"
        );
        assert_eq!(
            console(&["--console-listen", "0.0.0.0:8080", "--insecure"]).unwrap(),
            Some("0.0.0.0:8080".parse().unwrap())
        );
        let err = console(&["--console-listen", "nope"]).unwrap_err();
        assert!(err.to_string().contains("--console-listen"), "{err}");
    }

    #[test]
    fn a_console_beyond_loopback_without_tls_is_refused_unless_insecure() {
        let dir = tempfile::tempdir().unwrap();
        let tokens = "[[tokens]]\ntoken = \"operator-token-0001\"\nrole = \"admin\"\n\
                      accounts = [\"*\"]\n";
        let plain = dir.path().join("plain.toml");
        std::fs::write(&plain, tokens).unwrap();
        let tls = dir.path().join("tls.toml");
        std::fs::write(
            &tls,
            format!("{tokens}[tls]\ncert = \"server.pem\"\nkey = \"server.key\"\n"),
        )
        .unwrap();
        let plain = plain.to_str().unwrap();
        let tls = tls.to_str().unwrap();
        let console = |argv: &[&str]| serve_config(&serve_argv(argv)).map(|c| c.console_listen);
        let public = Some("0.0.0.0:8080".parse().unwrap());
        // Tokens, but the session cookie would cross the network in clear text.
        let err = console(&["--config", plain, "--console-listen", "0.0.0.0:8080"]).unwrap_err();
        assert_eq!(err.exit_code(), 64);
        let msg = err.to_string();
        assert!(msg.contains("--console-listen 0.0.0.0:8080"), "{msg}");
        assert!(msg.contains("--insecure") && msg.contains("[tls]"), "{msg}");
        assert_eq!(
            console(&[
                "--config",
                plain,
                "--console-listen",
                "0.0.0.0:8080",
                "--insecure"
            ])
            .unwrap(),
            public
        );
        assert_eq!(
            console(&["--config", tls, "--console-listen", "0.0.0.0:8080"]).unwrap(),
            public
        );
        // Loopback needs neither.
        assert!(console(&["--config", plain, "--console-listen", "127.0.0.1:8080"]).is_ok());
    }

    #[test]
    fn console_host_names_are_read_lowercase_and_a_bad_one_names_the_flag() {
        let hosts = |argv: &[&str]| serve_config(&serve_argv(argv)).map(|c| c.console_hosts);
        assert!(hosts(&[]).unwrap().is_empty());
        assert_eq!(
            hosts(&[
                "--console-host",
                "Desk.Example.com",
                "--console-host",
                "desk:8443"
            ])
            .unwrap(),
            vec!["desk.example.com".to_owned(), "desk:8443".to_owned()]
        );
        for bad in ["http://desk", "desk/x", "desk:0", "desk:http", "", "[zz]"] {
            let err = hosts(&["--console-host", bad]).expect_err(bad);
            assert_eq!(err.exit_code(), 64);
            assert!(err.to_string().starts_with("--console-host "), "{err}");
        }
    }

    #[test]
    fn a_node_is_named_by_its_host_and_port_and_advertises_its_listen_address() {
        let cluster = |argv: &[&str]| serve_config(&serve_argv(argv)).map(|c| c.cluster);
        let host = crate::config::host_name();
        let c = cluster(&["--listen", "127.0.0.1:6000"]).unwrap();
        assert_eq!(c.node_id, format!("{host}:6000"));
        assert_eq!(c.advertise, "127.0.0.1:6000");
        assert_eq!(c.partitions, crate::cluster::DEFAULT_PARTITIONS);
        assert_eq!(c.lease_secs, crate::cluster::DEFAULT_LEASE_SECS);
        // A wildcard address reaches no one: the host name stands in for it.
        let c = cluster(&["--listen", "0.0.0.0:7000", "--insecure"]).unwrap();
        assert_eq!(c.advertise, format!("{host}:7000"));
        assert_eq!(c.node_id, format!("{host}:7000"));
        let c = cluster(&[
            "--node-id",
            " node-1 ",
            "--advertise",
            "node-1.internal:50051",
        ])
        .unwrap();
        assert_eq!(
            (c.node_id.as_str(), c.advertise.as_str()),
            ("node-1", "node-1.internal:50051")
        );
        for a in ["10.0.0.5:50051", "[fd00::5]:50051", "localhost:1"] {
            assert_eq!(cluster(&["--advertise", a]).unwrap().advertise, a);
        }
    }

    #[test]
    fn the_cluster_section_sets_partitions_and_lease_and_flags_override_its_names() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cluster.toml");
        std::fs::write(
            &path,
            "[cluster]\nnode_id = \"from-file\"\nadvertise = \"file.internal:7001\"\n\
             partitions = 16\nlease_secs = 5\n",
        )
        .unwrap();
        let path = path.to_str().unwrap();
        let c = serve_config(&serve_argv(&["--config", path]))
            .unwrap()
            .cluster;
        assert_eq!(
            c,
            ClusterSettings {
                node_id: "from-file".into(),
                advertise: "file.internal:7001".into(),
                partitions: 16,
                lease_secs: 5,
            }
        );
        let c = serve_config(&serve_argv(&[
            "--config",
            path,
            "--node-id",
            "from-flag",
            "--advertise",
            "flag.internal:7002",
        ]))
        .unwrap()
        .cluster;
        assert_eq!(
            (c.node_id.as_str(), c.advertise.as_str(), c.partitions),
            ("from-flag", "flag.internal:7002", 16)
        );
    }

    #[test]
    fn a_bad_node_id_or_advertised_address_is_refused_naming_the_flag() {
        let cluster = |argv: &[&str]| serve_config(&serve_argv(argv)).map(|c| c.cluster);
        let long = "n".repeat(129);
        for bad in ["", "  ", "node 1", "node/1", "nöde", long.as_str()] {
            let err = cluster(&["--node-id", bad]).expect_err(bad);
            assert_eq!(err.exit_code(), 64);
            assert!(err.to_string().starts_with("--node-id: "), "{err}");
        }
        for bad in [
            "",
            "node-1",
            "node-1:0",
            "node-1:65536",
            "node-1:http",
            ":50051",
            "http://node-1:50051",
            "[::1:50051",
            "[nope]:50051",
            "node 1:50051",
        ] {
            let err = cluster(&["--advertise", bad]).expect_err(bad);
            assert_eq!(err.exit_code(), 64);
            assert!(err.to_string().starts_with("--advertise "), "{err}");
        }
    }
}
