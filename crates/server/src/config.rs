//! The configuration: defaults, then the TOML file, then `WSGATE_`
//! environment variables (`__` nests), then CLI flags; later wins.
//! Unknown keys and invalid values are errors that name the key.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Toml};
use figment::Figment;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use wsgate_core::channels::authorizer::{NamespacePolicy, PublishPolicy, SubscribePolicy};
use wsgate_core::limits::Limits;

/// A secret string: never printed, never serialized in clear.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"<redacted>\"")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("<redacted>")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

/// A URL as `config print` shows it: user-info and query string (where
/// credentials and API keys hide) replaced by `redacted`; a string that is
/// not a URL is not shown at all.
pub fn redact_url(url: &str) -> String {
    let Ok(mut u) = url::Url::parse(url) else {
        return "<redacted>".into();
    };
    if !u.username().is_empty() || u.password().is_some() {
        // Only URLs that cannot carry user-info fail these, and those have
        // none to hide.
        let _ = u.set_username("redacted");
        let _ = u.set_password(None);
    }
    if u.query().is_some() {
        u.set_query(Some("redacted"));
    }
    if u.fragment().is_some() {
        u.set_fragment(Some("redacted"));
    }
    u.to_string()
}

fn serialize_url<S: Serializer>(url: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&redact_url(url))
}

fn serialize_opt_url<S: Serializer>(url: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match url {
        Some(url) => serialize_url(url, s),
        None => s.serialize_none(),
    }
}

/// Keys whose values are secret: an error about one names the key and
/// never repeats the value.
const SECRET_KEYS: &[&str] = &[
    "auth.hmac_secret",
    "api.keys",
    "agent.api_key",
    "storage.url",
    "broker.url",
    "auth.jwks_url",
    "agent.url",
];

/// One figment error as text, without the value when the key is secret.
fn describe(e: &figment::Error) -> String {
    let key = e.path.join(".");
    let secret = SECRET_KEYS
        .iter()
        .any(|k| key == *k || key.starts_with(&format!("{k}.")));
    if !secret {
        return e.to_string();
    }
    let expected = match &e.kind {
        figment::error::Kind::InvalidType(_, expected) => format!(": expected {expected}"),
        _ => String::new(),
    };
    format!("invalid value for `{key}` (not shown: the key is secret){expected}")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// `[log]`. The level comes from `RUST_LOG` (default `info`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `WSGATE_LOG__FORMAT`: `text` (default) or `json`.
    pub format: LogFormat,
}

/// `[auth]`: how handshake tokens are verified.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// `WSGATE_AUTH__HMAC_SECRET`: key of HS256/384/512, as UTF-8 bytes.
    pub hmac_secret: Option<Secret>,
    /// `WSGATE_AUTH__PUBLIC_KEY_PEM`: path of an RSA, EC (P-256) or Ed25519
    /// public key in PEM.
    pub public_key_pem: Option<PathBuf>,
    /// `WSGATE_AUTH__JWKS_URL`: a JWKS document; keys cached by `kid`.
    /// `https://` (or `http://` to a loopback address).
    #[serde(serialize_with = "serialize_opt_url")]
    pub jwks_url: Option<String>,
    /// `WSGATE_AUTH__JWKS_REFRESH_SECS`: background refresh period (300).
    pub jwks_refresh_secs: u64,
    /// `WSGATE_AUTH__ALGORITHMS`: the allow-list (default `["HS256"]`).
    pub algorithms: Vec<String>,
    /// `WSGATE_AUTH__ISSUER`: `iss` must equal this when set.
    pub issuer: Option<String>,
    /// `WSGATE_AUTH__AUDIENCE`: `aud` must contain this when set.
    pub audience: Option<String>,
    /// `WSGATE_AUTH__LEEWAY_SECS`: clock skew allowed on exp/nbf (0).
    pub leeway_secs: u64,
    /// `WSGATE_AUTH__ALLOW_QUERY_TOKEN`: accept `?token=` (false: URLs end
    /// up in proxy logs and browser history).
    pub allow_query_token: bool,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            hmac_secret: None,
            public_key_pem: None,
            jwks_url: None,
            jwks_refresh_secs: 300,
            algorithms: vec!["HS256".into()],
            issuer: None,
            audience: None,
            leeway_secs: 0,
            allow_query_token: false,
        }
    }
}

/// `[origins]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct OriginsConfig {
    /// `WSGATE_ORIGINS__ALLOWED`: `scheme://host[:port]` entries or `*`.
    /// The request's own host is always allowed.
    pub allowed: Vec<String>,
}

/// `[transport]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TransportConfig {
    /// `WSGATE_TRANSPORT__COMPRESSION`: permessage-deflate (false).
    pub compression: bool,
    /// `WSGATE_TRANSPORT__COMPRESSION_LEVEL` (1): deflate level 1 (fastest)
    /// to 9 (smallest).
    pub compression_level: u32,
    /// `WSGATE_TRANSPORT__COMPRESSION_MIN_BYTES` (256): frames shorter
    /// than this go out uncompressed, where deflate saves little or nothing.
    pub compression_min_bytes: usize,
    /// `WSGATE_TRANSPORT__WRITE_DELAY_MS` (25): the longest a publication
    /// waits to share a write, on a connection receiving a burst (500
    /// frames/s or more; less below, none under 100/s). Replies are never
    /// held. 0 writes every batch at once. See `transport::scheduler`.
    pub write_delay_ms: u64,
}

impl Default for TransportConfig {
    fn default() -> Self {
        TransportConfig {
            compression: false,
            compression_level: 1,
            compression_min_bytes: 256,
            write_delay_ms: 25,
        }
    }
}

/// `[api]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// `WSGATE_API__KEYS`: keys accepted in `X-API-Key` (none by default:
    /// the server API is closed until keys are configured).
    pub keys: Vec<Secret>,
}

/// One `[[channels.namespaces]]` entry (used by channels; see
/// docs/channels.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NamespaceConfig {
    pub name: String,
    pub subscribe: String,
    pub publish: String,
    pub history_size: usize,
    pub history_ttl_secs: u64,
    pub presence: bool,
    pub join_leave: bool,
}

impl Default for NamespaceConfig {
    fn default() -> Self {
        NamespaceConfig {
            name: String::new(),
            subscribe: "any".into(),
            publish: "server".into(),
            history_size: 0,
            history_ttl_secs: 0,
            presence: false,
            join_leave: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct ChannelsConfig {
    pub namespaces: Vec<NamespaceConfig>,
}

/// `role:<role>` with a non-empty role.
fn role_of(s: &str) -> Option<String> {
    s.strip_prefix("role:")
        .filter(|r| !r.is_empty())
        .map(str::to_owned)
}

fn subscribe_policy(s: &str) -> Option<SubscribePolicy> {
    Some(match s {
        "any" => SubscribePolicy::Any,
        "owner" => SubscribePolicy::Owner,
        "claim" => SubscribePolicy::Claim,
        other => SubscribePolicy::Role(role_of(other)?),
    })
}

fn publish_policy(s: &str) -> Option<PublishPolicy> {
    Some(match s {
        "server" => PublishPolicy::Server,
        "any" => PublishPolicy::Any,
        "owner" => PublishPolicy::Owner,
        other => PublishPolicy::Role(role_of(other)?),
    })
}

impl NamespaceConfig {
    /// The core policy; `validate` has already checked the strings (an
    /// unchecked bad one falls back to the most restrictive policy).
    pub fn policy(&self) -> NamespacePolicy {
        let subscribe = subscribe_policy(&self.subscribe).unwrap_or(SubscribePolicy::Owner);
        let publish = publish_policy(&self.publish).unwrap_or(PublishPolicy::Server);
        NamespacePolicy {
            history_size: self.history_size,
            history_ttl: std::time::Duration::from_secs(self.history_ttl_secs),
            presence: self.presence,
            join_leave: self.join_leave,
            ..NamespacePolicy::new(subscribe, publish)
        }
    }
}

/// `[storage]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// `WSGATE_STORAGE__URL`: `sqlite://…` or `postgres://…`.
    pub url: Secret,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            url: Secret::new("sqlite://wsgate-data/wsgate.db"),
        }
    }
}

/// `[broker]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerConfig {
    /// `WSGATE_BROKER__URL`: `memory` or `redis://…` / `rediss://…`.
    pub url: Secret,
    /// `WSGATE_BROKER__PREFIX`: what every Redis key and pub/sub channel
    /// name starts with, so several deployments can share one Redis.
    pub prefix: String,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            prefix: "wsgate".into(),
            url: Secret::new("memory"),
        }
    }
}

/// `[graphql]` (docs/graphql.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GraphqlConfig {
    /// `WSGATE_GRAPHQL__MAX_DEPTH` (10): deepest selection a document may have.
    pub max_depth: usize,
    /// `WSGATE_GRAPHQL__MAX_COMPLEXITY` (1000): fields a document may select,
    /// counted as async-graphql does (each field 1 plus its children's).
    pub max_complexity: usize,
    /// `WSGATE_GRAPHQL__INTROSPECTION` (true).
    pub introspection: bool,
    /// `WSGATE_GRAPHQL__INIT_TIMEOUT_SECS` (3, as the graphql-ws server):
    /// a WebSocket client that sends no `connection_init` in time is
    /// closed with 4408.
    pub init_timeout_secs: u64,
    /// `WSGATE_GRAPHQL__SHARED_RESOLUTION` (true): identical subscriptions
    /// share one resolution per publication. Off only to measure it.
    pub shared_resolution: bool,
}

impl Default for GraphqlConfig {
    fn default() -> Self {
        GraphqlConfig {
            max_depth: 10,
            max_complexity: 1000,
            introspection: true,
            init_timeout_secs: 3,
            shared_resolution: true,
        }
    }
}

/// `[agent]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentConfig {
    /// `WSGATE_AGENT__KIND`: `echo` (default, built in), `http` or `openai`.
    pub kind: String,
    /// `WSGATE_AGENT__URL`: the `http` endpoint, or the `openai` base URL.
    #[serde(serialize_with = "serialize_url")]
    pub url: String,
    /// `WSGATE_AGENT__MODEL` (`openai`).
    pub model: String,
    /// `WSGATE_AGENT__API_KEY` (`openai`), sent as a bearer token.
    pub api_key: Option<Secret>,
    /// `WSGATE_AGENT__SYSTEM_PROMPT` (`openai`): sent first when not empty.
    pub system_prompt: String,
    /// `WSGATE_AGENT__TIMEOUT_SECS` (120): a run still going after this
    /// long ends `failed`.
    pub timeout_secs: u64,
    /// `WSGATE_AGENT__ECHO_DELAY_MS` (20): the echo agent's pause between
    /// partial results.
    pub echo_delay_ms: u64,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            kind: "echo".into(),
            url: "http://127.0.0.1:9000/run".into(),
            model: String::new(),
            api_key: None,
            system_prompt: String::new(),
            timeout_secs: 120,
            echo_delay_ms: 20,
        }
    }
}

/// The whole configuration. See docs/configuration.md.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `WSGATE_LISTEN` (default `127.0.0.1:8080`).
    pub listen: SocketAddr,
    /// `WSGATE_SHUTDOWN_GRACE_SECS` (10).
    pub shutdown_grace_secs: u64,
    /// `WSGATE_METRICS_INTERVAL_SECS` (10).
    pub metrics_interval_secs: u64,
    pub log: LogConfig,
    pub auth: AuthConfig,
    pub origins: OriginsConfig,
    pub limits: Limits,
    pub transport: TransportConfig,
    pub api: ApiConfig,
    pub channels: ChannelsConfig,
    pub storage: StorageConfig,
    pub broker: BrokerConfig,
    pub agent: AgentConfig,
    pub graphql: GraphqlConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            shutdown_grace_secs: 10,
            metrics_interval_secs: 10,
            log: LogConfig::default(),
            auth: AuthConfig::default(),
            origins: OriginsConfig::default(),
            limits: Limits::default(),
            transport: TransportConfig::default(),
            api: ApiConfig::default(),
            channels: ChannelsConfig::default(),
            storage: StorageConfig::default(),
            broker: BrokerConfig::default(),
            agent: AgentConfig::default(),
            graphql: GraphqlConfig::default(),
        }
    }
}

/// A configuration that could not be loaded or is invalid.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration file {0} does not exist")]
    MissingFile(PathBuf),
    #[error("{0}")]
    Parse(String),
    #[error("invalid value for `{key}`: {reason}")]
    Invalid { key: String, reason: String },
}

fn invalid(key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_string(),
        reason: reason.into(),
    }
}

pub const ALGORITHMS: &[&str] = &["HS256", "HS384", "HS512", "RS256", "ES256", "EdDSA"];

/// Builds the figment: defaults, file, environment. CLI flags are merged by
/// the caller on top.
pub fn figment(file: Option<&Path>, env: Env) -> Result<Figment, ConfigError> {
    // Defaults come from the structs' `#[serde(default)]`, not from a
    // serialized `Config`: serializing would redact the default secrets.
    let mut fig = Figment::new();
    if let Some(path) = file {
        if !path.exists() {
            return Err(ConfigError::MissingFile(path.to_path_buf()));
        }
        fig = fig.merge(Toml::file_exact(path));
    }
    Ok(fig.merge(env))
}

/// The environment provider: `WSGATE_AUTH__HMAC_SECRET` → `auth.hmac_secret`.
pub fn env_provider() -> Env {
    Env::prefixed("WSGATE_").split("__")
}

impl Config {
    /// Extracts and validates a configuration from a figment.
    pub fn from_figment(fig: &Figment) -> Result<Self, ConfigError> {
        let config: Config = fig.extract().map_err(|e| {
            // figment reports every error with the key path it concerns.
            let msgs: Vec<String> = e.into_iter().map(|e| describe(&e)).collect();
            ConfigError::Parse(msgs.join("; "))
        })?;
        config.validate()?;
        Ok(config)
    }

    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::from_figment(&figment(file, env_provider())?)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        self.limits
            .validate()
            .map_err(|(key, reason)| invalid(key, reason))?;
        if self.shutdown_grace_secs > 3600 {
            return Err(invalid("shutdown_grace_secs", "must be at most 3600"));
        }
        if self.metrics_interval_secs == 0 {
            return Err(invalid("metrics_interval_secs", "must be greater than 0"));
        }
        let g = &self.graphql;
        if g.max_depth == 0 || g.max_complexity == 0 {
            return Err(invalid(
                "graphql.max_depth",
                "graphql.max_depth and graphql.max_complexity must be greater than 0",
            ));
        }
        if !(1..=300).contains(&g.init_timeout_secs) {
            return Err(invalid("graphql.init_timeout_secs", "must be 1 to 300"));
        }
        let auth = &self.auth;
        if auth.algorithms.is_empty() {
            return Err(invalid(
                "auth.algorithms",
                "must list at least one algorithm",
            ));
        }
        for alg in &auth.algorithms {
            if !ALGORITHMS.contains(&alg.as_str()) {
                return Err(invalid(
                    "auth.algorithms",
                    format!("unsupported algorithm {alg:?}; use any of {ALGORITHMS:?}"),
                ));
            }
        }
        if let Some(secret) = &auth.hmac_secret {
            if secret.expose().len() < 32 {
                return Err(invalid(
                    "auth.hmac_secret",
                    "must be at least 32 bytes (256 bits) long",
                ));
            }
        }
        if let Some(url) = &auth.jwks_url {
            if !jwks_url_allowed(url) {
                return Err(invalid(
                    "auth.jwks_url",
                    "must be an https:// URL (http:// only for a loopback address)",
                ));
            }
        }
        if auth.jwks_refresh_secs == 0 {
            return Err(invalid("auth.jwks_refresh_secs", "must be greater than 0"));
        }
        for origin in &self.origins.allowed {
            if origin != "*" && !valid_origin(origin) {
                return Err(invalid(
                    "origins.allowed",
                    format!("{origin:?} is not \"*\" or scheme://host[:port]"),
                ));
            }
        }
        if self.transport.write_delay_ms > 1000 {
            return Err(invalid("transport.write_delay_ms", "must be at most 1000"));
        }
        if !(1..=9).contains(&self.transport.compression_level) {
            return Err(invalid(
                "transport.compression_level",
                "must be between 1 and 9",
            ));
        }
        for key in &self.api.keys {
            if key.expose().len() < 16 {
                return Err(invalid(
                    "api.keys",
                    "every key must be at least 16 bytes long",
                ));
            }
        }
        let url = self.broker.url.expose();
        if url != "memory" && !url.starts_with("redis://") && !url.starts_with("rediss://") {
            return Err(invalid("broker.url", "must be \"memory\" or redis://…"));
        }
        let prefix = &self.broker.prefix;
        if prefix.is_empty()
            || prefix.len() > 64
            || !prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
        {
            return Err(invalid(
                "broker.prefix",
                "1 to 64 characters of A-Z, a-z, 0-9, _ - .",
            ));
        }
        let url = self.storage.url.expose();
        if !url.starts_with("sqlite:")
            && !url.starts_with("postgres://")
            && !url.starts_with("postgresql://")
        {
            return Err(invalid("storage.url", "must be sqlite://… or postgres://…"));
        }
        if self.agent.timeout_secs == 0 || self.agent.timeout_secs > 86_400 {
            return Err(invalid("agent.timeout_secs", "must be between 1 and 86400"));
        }
        if self.agent.echo_delay_ms > 60_000 {
            return Err(invalid("agent.echo_delay_ms", "must be at most 60000"));
        }
        if !["echo", "http", "openai"].contains(&self.agent.kind.as_str()) {
            return Err(invalid(
                "agent.kind",
                "must be \"echo\", \"http\" or \"openai\"",
            ));
        }
        for ns in &self.channels.namespaces {
            if subscribe_policy(&ns.subscribe).is_none() {
                return Err(invalid(
                    "channels.namespaces.subscribe",
                    format!("{:?} is not any, owner, claim or role:<role>", ns.subscribe),
                ));
            }
            if publish_policy(&ns.publish).is_none() {
                return Err(invalid(
                    "channels.namespaces.publish",
                    format!("{:?} is not server, any, owner or role:<role>", ns.publish),
                ));
            }
            if ns.name.contains(':')
                || !(ns.name.is_empty() || wsgate_core::channels::names::valid_name(&ns.name))
            {
                return Err(invalid(
                    "channels.namespaces.name",
                    format!(
                        "{:?} must be empty or [A-Za-z0-9_.@-]+ without ':'",
                        ns.name
                    ),
                ));
            }
            if ns.history_size > wsgate_core::limits::MAX_HISTORY_SIZE {
                return Err(invalid(
                    "channels.namespaces.history_size",
                    format!("must be at most {}", wsgate_core::limits::MAX_HISTORY_SIZE),
                ));
            }
        }
        Ok(())
    }

    /// The configuration as TOML with secrets redacted.
    pub fn to_redacted_toml(&self) -> String {
        // Serializing a plain struct of strings, numbers and tables to TOML
        // cannot fail.
        toml::to_string_pretty(self).expect("configuration serializes to TOML")
    }
}

/// Keys fetched over plain HTTP could be swapped by anyone on the path,
/// so a JWKS URL is `https://`, or `http://` to this machine only.
fn jwks_url_allowed(url: &str) -> bool {
    let Ok(url) = reqwest::Url::parse(url) else {
        return false;
    };
    match (url.scheme(), url.host()) {
        ("https", Some(_)) => true,
        ("http", Some(url::Host::Ipv4(ip))) => ip.is_loopback(),
        ("http", Some(url::Host::Ipv6(ip))) => ip.is_loopback(),
        ("http", Some(url::Host::Domain(d))) => d.eq_ignore_ascii_case("localhost"),
        _ => false,
    }
}

/// `scheme://host[:port]` with nothing after it.
pub fn valid_origin(origin: &str) -> bool {
    let Some((scheme, rest)) = origin.split_once("://") else {
        return false;
    };
    !scheme.is_empty()
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
        && !rest.is_empty()
        && !rest.contains(['/', '?', '#', '@', ' '])
}

#[cfg(test)]
// figment's Jail closures return its large error type; fine in tests.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;
    use figment::Jail;

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn file_then_env_then_flags() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "wsgate.toml",
                r#"
                listen = "127.0.0.1:1111"
                [limits]
                max_message_bytes = 1000
                messages_per_minute = 5
                "#,
            )?;
            jail.set_env("WSGATE_LIMITS__MAX_MESSAGE_BYTES", "2000");
            jail.set_env("WSGATE_LISTEN", "127.0.0.1:2222");
            let fig = figment(Some(Path::new("wsgate.toml")), env_provider()).unwrap();
            let c = Config::from_figment(&fig).unwrap();
            assert_eq!(c.limits.max_message_bytes, 2000, "env beats file");
            assert_eq!(c.limits.messages_per_minute, 5, "file beats default");
            assert_eq!(c.listen.port(), 2222);
            let fig = fig.merge(("listen", "127.0.0.1:3333"));
            let c = Config::from_figment(&fig).unwrap();
            assert_eq!(c.listen.port(), 3333, "flag beats env");
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_are_named() {
        Jail::expect_with(|jail| {
            jail.create_file("wsgate.toml", "[limits]\nmax_mesage_bytes = 1\n")?;
            let err = Config::load(Some(Path::new("wsgate.toml"))).unwrap_err();
            assert!(err.to_string().contains("max_mesage_bytes"), "{err}");
            Ok(())
        });
        Jail::expect_with(|jail| {
            jail.set_env("WSGATE_LIMTS__X", "1");
            let err = Config::load(None).unwrap_err();
            assert!(err.to_string().to_lowercase().contains("limts"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn invalid_values_are_named() {
        Jail::expect_with(|jail| {
            jail.set_env("WSGATE_LIMITS__MAX_CONNECTIONS", "many");
            let err = Config::load(None).unwrap_err().to_string();
            assert!(err.to_lowercase().contains("max_connections"), "{err}");
            Ok(())
        });
        let mut c = Config::default();
        c.auth.algorithms = vec!["none".into()];
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("auth.algorithms"));
        let mut c = Config::default();
        c.auth.hmac_secret = Some(Secret::new("short"));
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("auth.hmac_secret"));
        let mut c = Config::default();
        c.limits.heartbeat_timeout_secs = 10;
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("limits.heartbeat_timeout_secs"));
        let mut c = Config::default();
        c.origins.allowed = vec!["https://a.example/path".into()];
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("origins.allowed"));
    }

    #[test]
    fn missing_file_is_an_error() {
        assert!(matches!(
            Config::load(Some(Path::new("/nonexistent/wsgate.toml"))),
            Err(ConfigError::MissingFile(_))
        ));
    }

    #[test]
    fn secrets_are_redacted() {
        let mut c = Config::default();
        c.auth.hmac_secret = Some(Secret::new("x".repeat(40)));
        c.api.keys = vec![Secret::new("k".repeat(20))];
        let printed = c.to_redacted_toml();
        assert!(!printed.contains(&"x".repeat(40)));
        assert!(!printed.contains(&"k".repeat(20)));
        assert!(printed.contains("<redacted>"));
        assert!(!format!("{c:?}").contains(&"x".repeat(40)));
    }

    #[test]
    fn url_credentials_and_queries_are_redacted() {
        let mut c = Config::default();
        c.auth.jwks_url = Some("https://u:pass-word-1@idp.example/jwks.json?sig=s3cr3t".into());
        c.agent.url = "https://llm.example/v1?key=agent-k3y#frag".into();
        let printed = c.to_redacted_toml();
        for leaked in ["pass-word-1", "s3cr3t", "agent-k3y", "frag"] {
            assert!(!printed.contains(leaked), "{leaked} in {printed}");
        }
        assert!(printed.contains("https://redacted@idp.example/jwks.json?redacted"));
        assert!(printed.contains("https://llm.example/v1?redacted"));
        assert_eq!(redact_url("not a url"), "<redacted>");
        assert_eq!(
            redact_url("http://127.0.0.1:9000/run"),
            "http://127.0.0.1:9000/run"
        );
    }

    #[test]
    fn errors_on_secret_keys_do_not_repeat_the_value() {
        Jail::expect_with(|jail| {
            // A table where a list is expected: figment would quote it.
            jail.set_env("WSGATE_API__KEYS", "{a=\"leaky-api-key-1234567\"}");
            let err = Config::load(None).unwrap_err().to_string();
            assert!(!err.contains("leaky-api-key"), "{err}");
            assert!(err.contains("api.keys"), "{err}");
            Ok(())
        });
        Jail::expect_with(|jail| {
            jail.set_env(
                "WSGATE_AUTH__HMAC_SECRET",
                "[\"leaky-secret-0123456789abcdef0123\"]",
            );
            let err = Config::load(None).unwrap_err().to_string();
            assert!(!err.contains("leaky-secret"), "{err}");
            assert!(err.contains("auth.hmac_secret"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn jwks_url_must_be_https_unless_loopback() {
        let check = |url: &str| {
            let mut c = Config::default();
            c.auth.jwks_url = Some(url.into());
            c.validate().is_ok()
        };
        assert!(check("https://idp.example/.well-known/jwks.json"));
        assert!(check("http://127.0.0.1:8081/jwks.json"));
        assert!(check("http://[::1]:8081/jwks.json"));
        assert!(check("http://localhost/jwks.json"));
        assert!(!check("http://idp.example/jwks.json"));
        assert!(!check("http://10.0.0.1/jwks.json"));
        assert!(!check("ftp://idp.example/jwks.json"));
        assert!(!check("jwks.json"));
    }
}
