//! Command-line interface: `serve`, `token`, `config print|check`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use figment::Figment;
use rand::distr::{Alphanumeric, SampleString};
use tokio_util::sync::CancellationToken;

use crate::auth::{sign_hs256, Claims};
use crate::config::{self, Config, Secret};
use crate::http::dashboard::DashboardOptions;
use wsgate_core::auth::unix_now;

#[derive(Debug, Parser)]
#[command(
    name = "wsgate",
    version,
    about = "A secure real-time WebSocket gateway"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server.
    Serve(ServeArgs),
    /// Print a token signed with the configured HMAC secret.
    Token(TokenArgs),
    /// Inspect the configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Load generators (see docs/benchmarks.md).
    #[command(subcommand)]
    Bench(wsgate_bench::BenchCommand),
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Listen address (default 127.0.0.1:8080).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Run with no configuration: a generated HS256 secret and a printed
    /// admin token for user `dev`.
    #[arg(long)]
    pub dev: bool,
    /// Serve the dashboard's files from this directory (as built by
    /// `clients/dashboard`) instead of the copies in the binary: for
    /// working on the page without rebuilding wsgate.
    #[arg(long, value_name = "DIR")]
    pub dashboard_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct TokenArgs {
    /// The user id (`sub`).
    #[arg(long)]
    pub sub: String,
    #[arg(long = "role")]
    pub roles: Vec<String>,
    /// Lifetime, e.g. 30m, 1h, 7d.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub ttl: Duration,
    /// Extra channel patterns the user may subscribe to.
    #[arg(long = "channel")]
    pub channels: Vec<String>,
    #[arg(long)]
    pub name: Option<String>,
    #[arg(long)]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the effective configuration, secrets redacted.
    Print {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Validate the configuration; exits non-zero with the reason.
    Check {
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

fn load(file: Option<&Path>, extra: impl FnOnce(Figment) -> Figment) -> anyhow::Result<Config> {
    let fig = extra(config::figment(file, config::env_provider())?);
    Ok(Config::from_figment(&fig)?)
}

/// Runs the parsed command.
pub fn main(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => serve(args),
        Command::Bench(cmd) => wsgate_bench::main(cmd),
        Command::Token(args) => {
            let config = load(args.config.as_deref(), |f| f)?;
            let Some(secret) = &config.auth.hmac_secret else {
                bail!(
                    "auth.hmac_secret is not set (WSGATE_AUTH__HMAC_SECRET); `token` signs with it"
                );
            };
            let claims = Claims {
                roles: args.roles,
                channels: args.channels,
                name: args.name,
                ..Claims::new(args.sub, unix_now() + args.ttl.as_secs())
            }
            .for_config(&config.auth);
            println!("{}", sign_hs256(secret.expose(), &claims));
            Ok(())
        }
        Command::Config(ConfigCommand::Print { config }) => {
            let config = load(config.as_deref(), |f| f)?;
            print!("{}", config.to_redacted_toml());
            Ok(())
        }
        Command::Config(ConfigCommand::Check { config }) => {
            let config = load(config.as_deref(), |f| f)?;
            match crate::auth::JwtVerifier::new(&config.auth, None) {
                Ok(_) => {}
                // With a JWKS URL, asymmetric keys come from there at run time.
                Err(crate::auth::KeyError::NoKeyFor(_)) if config.auth.jwks_url.is_some() => {}
                Err(e) => return Err(e).context("auth"),
            }
            println!("configuration is valid");
            Ok(())
        }
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let listen = args.listen;
    let mut config = load(args.config.as_deref(), |f| match listen {
        Some(addr) => f.merge(("listen", addr.to_string())),
        None => f,
    })?;
    let _log_guard = crate::telemetry::init(config.log.format);
    let mut dev_token = None;
    let mut dev_api_key = None;
    if args.dev {
        let secret = match &config.auth.hmac_secret {
            Some(s) => s.clone(),
            None => {
                let s = Secret::new(Alphanumeric.sample_string(&mut rand::rng(), 48));
                config.auth.hmac_secret = Some(s.clone());
                if !config.auth.algorithms.iter().any(|a| a == "HS256") {
                    config.auth.algorithms.push("HS256".into());
                }
                s
            }
        };
        let claims = Claims {
            roles: vec!["admin".into()],
            name: Some("Developer".into()),
            ..Claims::new("dev", unix_now() + 24 * 3600)
        }
        .for_config(&config.auth);
        dev_token = Some(sign_hs256(secret.expose(), &claims));
        // A newcomer should be able to publish without writing a config:
        // a key for the server API, printed with the token.
        if config.api.keys.is_empty() {
            let key = format!("dev-{}", Alphanumeric.sample_string(&mut rand::rng(), 32));
            dev_api_key = Some(key.clone());
            config.api.keys.push(Secret::new(key));
        }
    } else if config.auth.hmac_secret.is_none()
        && config.auth.public_key_pem.is_none()
        && config.auth.jwks_url.is_none()
    {
        bail!("no token key is configured: set auth.hmac_secret, auth.public_key_pem or auth.jwks_url, or run with --dev");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    runtime.block_on(async move {
        let listener = crate::listener::bind(config.listen)
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        let addr = listener.local_addr()?;
        if let Some(token) = &dev_token {
            println!("wsgate dev mode: listening on http://{addr}");
            println!("  token (user dev, role admin, 24h): {token}");
            match &dev_api_key {
                Some(key) => println!("  API key (X-API-Key): {key}"),
                None => println!("  API key: the configured api.keys"),
            }
            println!("  dashboard: http://{addr}/dashboard (the token is filled in)");
            println!("  websocket: ws://{addr}/ws");
            let key = dev_api_key.as_deref().unwrap_or("$WSGATE_API_KEY");
            println!(
                "  publish:   curl -H 'X-API-Key: {key}' -H 'Content-Type: application/json' \\\n             \
                 -d '{{\"channel\":\"events\",\"data\":{{\"type\":\"event\",\"event_type\":\"HELLO\"}}}}' http://{addr}/api/publish"
            );
        }
        let dashboard = DashboardOptions {
            dev_token,
            assets_dir: args.dashboard_dir,
        };
        let shutdown = CancellationToken::new();
        tokio::spawn(wait_for_signal(shutdown.clone()));
        crate::server::run_with(config, dashboard, listener, shutdown).await
    })
}

async fn wait_for_signal(shutdown: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
    shutdown.cancel();
}
