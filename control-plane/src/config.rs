//! Command-line and environment configuration of the control plane.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, ValueEnum};

use crate::signing::SigningAlgorithm;
use crate::store::redis::{KeySpace, RedisOptions, RedisTarget, RedisTimeouts, RedisTls};
use crate::tls::{CaBundle, ClientIdentity, TlsConfigError};

/// Where the admin token comes from; shared by the server and the `portcullis` CLI.
#[derive(Args, Clone, Default)]
pub struct AdminTokenArgs {
    /// The admin API bearer token (prefer --admin-token-file: arguments are visible
    /// to other local users).
    #[arg(
        long,
        env = "PORTCULLIS_ADMIN_TOKEN",
        hide_env_values = true,
        conflicts_with = "admin_token_file",
        global = true
    )]
    pub admin_token: Option<String>,

    /// A file holding the admin API bearer token (surrounding whitespace ignored).
    #[arg(long, env = "PORTCULLIS_ADMIN_TOKEN_FILE", global = true)]
    pub admin_token_file: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum AdminTokenError {
    #[error("no admin token: set --admin-token-file (PORTCULLIS_ADMIN_TOKEN_FILE) or --admin-token (PORTCULLIS_ADMIN_TOKEN)")]
    Missing,
    #[error("cannot read the admin token file {path}: {source}")]
    Unreadable { path: PathBuf, source: std::io::Error },
    #[error("the admin token is empty")]
    Empty,
}

impl AdminTokenArgs {
    /// The configured token, read from the file if one is given.
    pub fn load(&self) -> Result<String, AdminTokenError> {
        let token = read_secret(self.admin_token.as_deref(), self.admin_token_file.as_deref())
            .map_err(|(path, source)| AdminTokenError::Unreadable { path, source })?
            .ok_or(AdminTokenError::Missing)?;
        if token.is_empty() {
            return Err(AdminTokenError::Empty);
        }
        Ok(token.to_string())
    }
}

/// A secret given as a value or in a file (the value wins), without surrounding
/// whitespace; `None` when neither is set.
fn read_secret(
    value: Option<&str>,
    file: Option<&std::path::Path>,
) -> Result<Option<zeroize::Zeroizing<String>>, (PathBuf, std::io::Error)> {
    match (value, file) {
        (Some(value), _) => Ok(Some(zeroize::Zeroizing::new(value.trim().to_owned()))),
        (None, Some(path)) => {
            let text = zeroize::Zeroizing::new(
                std::fs::read_to_string(path).map_err(|source| (path.to_path_buf(), source))?,
            );
            Ok(Some(zeroize::Zeroizing::new(text.trim().to_owned())))
        }
        (None, None) => Ok(None),
    }
}

/// Where the fleet credentials come from: the secret every Envoy presents on the
/// internal listener. During a rotation the previous one is accepted too.
#[derive(Args, Clone, Default)]
pub struct FleetCredentialArgs {
    /// The fleet credential (prefer --fleet-credential-file): at least 32 characters.
    #[arg(
        long,
        env = "PORTCULLIS_FLEET_CREDENTIAL",
        hide_env_values = true,
        conflicts_with = "fleet_credential_file"
    )]
    pub fleet_credential: Option<String>,

    /// A file holding the fleet credential (surrounding whitespace ignored).
    #[arg(long, env = "PORTCULLIS_FLEET_CREDENTIAL_FILE")]
    pub fleet_credential_file: Option<PathBuf>,

    /// The previous fleet credential, still accepted while the fleet rotates to the
    /// current one; remove it once every Envoy sends the current one.
    #[arg(
        long,
        env = "PORTCULLIS_FLEET_CREDENTIAL_PREVIOUS",
        hide_env_values = true,
        conflicts_with = "fleet_credential_previous_file"
    )]
    pub fleet_credential_previous: Option<String>,

    /// A file holding the previous fleet credential.
    #[arg(long, env = "PORTCULLIS_FLEET_CREDENTIAL_PREVIOUS_FILE")]
    pub fleet_credential_previous_file: Option<PathBuf>,
}

impl std::fmt::Debug for FleetCredentialArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetCredentialArgs")
            .field("fleet_credential", &self.fleet_credential.as_ref().map(|_| ".."))
            .field("fleet_credential_file", &self.fleet_credential_file)
            .field("fleet_credential_previous", &self.fleet_credential_previous.as_ref().map(|_| ".."))
            .field("fleet_credential_previous_file", &self.fleet_credential_previous_file)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FleetCredentialError {
    #[error(
        "no fleet credential: set --fleet-credential-file (PORTCULLIS_FLEET_CREDENTIAL_FILE) or \
         --fleet-credential (PORTCULLIS_FLEET_CREDENTIAL); generate one with `head -c 32 /dev/urandom | base64`"
    )]
    Missing,
    #[error("cannot read the fleet credential file {path}: {source}")]
    Unreadable { path: PathBuf, source: std::io::Error },
    #[error("the {which} fleet credential {why}")]
    Invalid { which: &'static str, why: String },
    #[error(transparent)]
    Credentials(#[from] crate::admin_credential::FleetCredentialsError),
}

impl FleetCredentialArgs {
    /// The accepted credentials, read from their files if given.
    pub fn load(&self) -> Result<crate::admin_credential::FleetCredentials, FleetCredentialError> {
        use portcullis_core::fleet::FleetCredential;
        let read = |value: &Option<String>, file: &Option<PathBuf>, which: &'static str| {
            read_secret(value.as_deref(), file.as_deref())
                .map_err(|(path, source)| FleetCredentialError::Unreadable { path, source })?
                .map(|text| {
                    FleetCredential::new(&text).map_err(|why| FleetCredentialError::Invalid { which, why })
                })
                .transpose()
        };
        let current = read(&self.fleet_credential, &self.fleet_credential_file, "current")?
            .ok_or(FleetCredentialError::Missing)?;
        let previous =
            read(&self.fleet_credential_previous, &self.fleet_credential_previous_file, "previous")?;
        Ok(crate::admin_credential::FleetCredentials::new(&current, previous.as_ref())?)
    }
}

/// Where the master key (which seals signing keys at rest) comes from.
#[derive(Args, Clone, Default)]
pub struct MasterKeyArgs {
    /// The master key: 32 bytes, base64 (prefer --master-key-file).
    #[arg(long, env = "PORTCULLIS_MASTER_KEY", hide_env_values = true, conflicts_with = "master_key_file")]
    pub master_key: Option<String>,

    /// A file holding the base64 master key.
    #[arg(long, env = "PORTCULLIS_MASTER_KEY_FILE")]
    pub master_key_file: Option<PathBuf>,

    /// The master key being replaced (prefer --previous-master-key-file): signing keys
    /// still sealed under it are re-sealed under the master key at startup.
    #[arg(
        long,
        env = "PORTCULLIS_PREVIOUS_MASTER_KEY",
        hide_env_values = true,
        conflicts_with = "previous_master_key_file"
    )]
    pub previous_master_key: Option<String>,

    /// A file holding the base64 master key being replaced.
    #[arg(long, env = "PORTCULLIS_PREVIOUS_MASTER_KEY_FILE")]
    pub previous_master_key_file: Option<PathBuf>,
}

impl std::fmt::Debug for MasterKeyArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MasterKeyArgs")
            .field("master_key", &self.master_key.as_ref().map(|_| ".."))
            .field("master_key_file", &self.master_key_file)
            .field("previous_master_key", &self.previous_master_key.as_ref().map(|_| ".."))
            .field("previous_master_key_file", &self.previous_master_key_file)
            .finish()
    }
}

/// Parses `90`, `90s`, `15m`, `24h` or `7d` into seconds.
pub fn parse_duration_secs(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (digits, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let value: u64 =
        digits.parse().map_err(|_| format!("{text:?} is not a duration like 90s, 15m, 24h or 7d"))?;
    let factor = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{text:?}: the unit must be s, m, h or d")),
    };
    value
        .checked_mul(factor)
        .filter(|v| *v > 0)
        .ok_or_else(|| format!("{text:?} must be positive and reasonable"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StoreKind {
    /// redb database in --data-dir: durable, single replica (the default).
    Embedded,
    /// In-process memory: lost on restart, for tests and demos.
    Memory,
    /// Redis, shared by all replicas: one server (--redis-url) or a Redis Cluster
    /// (--redis-cluster-nodes).
    Redis,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// The Portcullis control plane: signing keys, token minting and shared state for the
/// Envoy filter.
#[derive(Parser, Clone)]
#[command(name = "portcullis-control-plane", version)]
pub struct ServerConfig {
    /// Address of the admin listener: the admin API (admin token), metrics, health.
    #[arg(long, env = "PORTCULLIS_ADMIN_LISTEN", default_value = "127.0.0.1:9090")]
    pub admin_listen: SocketAddr,

    /// Address of the internal listener: what Envoys call (fleet credential), plus the
    /// public JWKS, refresh token exchange and health.
    #[arg(long, env = "PORTCULLIS_INTERNAL_LISTEN", default_value = "127.0.0.1:9091")]
    pub internal_listen: SocketAddr,

    /// Removed: the single listener was split into --admin-listen and
    /// --internal-listen. Given, it stops startup with a message saying so.
    #[arg(long, env = "PORTCULLIS_LISTEN", hide = true)]
    pub listen: Option<String>,

    #[command(flatten)]
    pub fleet: FleetCredentialArgs,

    /// State store backend.
    #[arg(long, env = "PORTCULLIS_STORE", value_enum, default_value_t = StoreKind::Embedded)]
    pub store: StoreKind,

    /// Directory of the embedded store's database.
    #[arg(long, env = "PORTCULLIS_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    #[command(flatten)]
    pub redis: RedisArgs,

    #[command(flatten)]
    pub admin_token: AdminTokenArgs,

    /// `iss` of minted tokens.
    #[arg(long, env = "PORTCULLIS_ISSUER", default_value = "portcullis")]
    pub issuer: String,

    /// Default `aud` of minted tokens.
    #[arg(long, env = "PORTCULLIS_AUDIENCE", default_value = "portcullis")]
    pub audience: String,

    /// Default lifetime of minted access tokens, in seconds (1..=86400).
    #[arg(
        long,
        env = "PORTCULLIS_ACCESS_TOKEN_TTL",
        default_value_t = 900,
        value_parser = clap::value_parser!(u64).range(1..=86_400)
    )]
    pub access_token_ttl: u64,

    /// Default lifetime of refresh tokens (e.g. `7d`, `12h`, `3600`; seconds without a
    /// unit). Each refresh hands out a new one.
    #[arg(long, env = "PORTCULLIS_REFRESH_TOKEN_TTL", default_value = "7d", value_parser = parse_duration_secs)]
    pub refresh_token_ttl: u64,

    #[command(flatten)]
    pub master_key: MasterKeyArgs,

    /// Algorithm of newly created signing keys.
    #[arg(long, env = "PORTCULLIS_SIGNING_ALG", value_enum, default_value_t = SigningAlgorithm::Es256)]
    pub signing_alg: SigningAlgorithm,

    /// How long a replaced signing key stays in the JWKS after a rotation. Never
    /// less than the longest access-token lifetime (24h).
    #[arg(long, env = "PORTCULLIS_KEY_OVERLAP", default_value = "24h", value_parser = parse_duration_secs)]
    pub key_overlap: u64,

    /// Rotate the signing key automatically at this age (off by default).
    #[arg(long, env = "PORTCULLIS_ROTATE_EVERY", value_parser = parse_duration_secs)]
    pub rotate_every: Option<u64>,

    /// Purge audit records older than this many days (behind a signed checkpoint, so
    /// the rest still verifies). Unset: keep them forever.
    #[arg(long, env = "PORTCULLIS_AUDIT_RETENTION_DAYS", value_parser = clap::value_parser!(u64).range(1..=36500))]
    pub audit_retention_days: Option<u64>,

    /// Change feed entries kept; followers further behind get a snapshot.
    #[arg(long, env = "PORTCULLIS_FEED_KEEP", default_value_t = crate::revocations::DEFAULT_FEED_KEEP)]
    pub feed_keep: usize,

    /// Longest lifetime an API token may be created with (e.g. `365d`, `90d`); a longer
    /// `expiresIn` is refused.
    #[arg(long, env = "PORTCULLIS_API_TOKEN_MAX_TTL", default_value = "365d", value_parser = parse_duration_secs)]
    pub api_token_max_ttl: u64,

    /// What every API token starts with (`<prefix>_…`): 1 to 16 of a-z and 0-9, so leak
    /// scanners can be told what to look for.
    #[arg(long, env = "PORTCULLIS_API_TOKEN_PREFIX", default_value = portcullis_core::api_token::DEFAULT_PREFIX)]
    pub api_token_prefix: String,

    /// Log output format; the level comes from RUST_LOG (default `info`).
    #[arg(long, env = "PORTCULLIS_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    #[command(flatten)]
    pub burst: BurstArgs,

    /// More CA certificates (PEM) to trust for outbound HTTPS (webhooks), in addition
    /// to the built-in roots.
    #[arg(long, env = "PORTCULLIS_WEBHOOK_CA_FILE")]
    pub webhook_ca_file: Option<PathBuf>,
}

impl ServerConfig {
    /// The API token settings, checked.
    pub fn api_token_policy(&self) -> Result<crate::api_tokens::ApiTokenPolicy, String> {
        let policy = crate::api_tokens::ApiTokenPolicy {
            prefix: self.api_token_prefix.clone(),
            max_ttl_seconds: self.api_token_max_ttl,
        };
        policy.validate()?;
        Ok(policy)
    }

    /// The `--webhook-ca-file` certificates, checked.
    pub fn webhook_ca(&self) -> Result<Option<CaBundle>, TlsConfigError> {
        self.webhook_ca_file.as_deref().map(|path| CaBundle::load("--webhook-ca-file", path)).transpose()
    }
}

/// Where Redis is and how to talk to it (`--store redis`).
#[derive(Args, Clone)]
pub struct RedisArgs {
    /// One Redis server for --store redis: redis://[user:password@]host:port[/db], or
    /// rediss://… for TLS.
    #[arg(long, env = "PORTCULLIS_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,

    /// A Redis Cluster for --store redis, instead of --redis-url: seed node URLs
    /// (redis:// or rediss://, no database), comma-separated or repeated; the other
    /// nodes are discovered.
    #[arg(
        long,
        env = "PORTCULLIS_REDIS_CLUSTER_NODES",
        hide_env_values = true,
        value_delimiter = ',',
        conflicts_with = "redis_url"
    )]
    pub redis_cluster_nodes: Vec<String>,

    /// CA certificates (PEM) Redis' certificate must chain to (rediss:// only); they
    /// replace the built-in roots for Redis.
    #[arg(long, env = "PORTCULLIS_REDIS_CA_FILE")]
    pub redis_ca_file: Option<PathBuf>,

    /// Client certificate chain (PEM) for a Redis that requires one (mutual TLS).
    #[arg(long, env = "PORTCULLIS_REDIS_CERT_FILE", requires = "redis_key_file")]
    pub redis_cert_file: Option<PathBuf>,

    /// Private key (PEM) of --redis-cert-file.
    #[arg(long, env = "PORTCULLIS_REDIS_KEY_FILE", requires = "redis_cert_file")]
    pub redis_key_file: Option<PathBuf>,

    /// Prefix of every Redis key; deployments sharing one Redis (or Redis Cluster,
    /// which has no numbered databases) need different prefixes.
    #[arg(long, env = "PORTCULLIS_REDIS_KEY_PREFIX", default_value = crate::store::redis::keys::DEFAULT_PREFIX)]
    pub redis_key_prefix: String,
}

#[derive(Debug, thiserror::Error)]
pub enum RedisConfigError {
    #[error(
        "--store redis needs --redis-url (PORTCULLIS_REDIS_URL) or --redis-cluster-nodes \
         (PORTCULLIS_REDIS_CLUSTER_NODES)"
    )]
    MissingTarget,
    #[error("--redis-key-prefix: {0}")]
    KeyPrefix(String),
    #[error("{flag} needs a rediss:// URL: the Redis connection is not TLS")]
    TlsWithoutRediss { flag: &'static str },
    #[error(transparent)]
    Tls(#[from] TlsConfigError),
}

impl RedisArgs {
    /// The validated store options, certificate files read and checked.
    pub fn load(&self) -> Result<RedisOptions, RedisConfigError> {
        let (target, urls) = match (&self.redis_url, self.redis_cluster_nodes.as_slice()) {
            (Some(url), _) => (RedisTarget::Server(url.clone()), vec![url.as_str()]),
            (None, []) => return Err(RedisConfigError::MissingTarget),
            (None, nodes) => {
                (RedisTarget::Cluster(nodes.to_vec()), nodes.iter().map(String::as_str).collect())
            }
        };
        let keys = KeySpace::new(&self.redis_key_prefix).map_err(RedisConfigError::KeyPrefix)?;
        let tls_flag = match (&self.redis_ca_file, &self.redis_cert_file) {
            (Some(_), _) => Some("--redis-ca-file"),
            (None, Some(_)) => Some("--redis-cert-file"),
            (None, None) => None,
        };
        if let Some(flag) = tls_flag {
            if !urls.iter().all(|url| url.trim_start().starts_with("rediss://")) {
                return Err(RedisConfigError::TlsWithoutRediss { flag });
            }
        }
        let ca =
            self.redis_ca_file.as_deref().map(|path| CaBundle::load("--redis-ca-file", path)).transpose()?;
        let identity = match (&self.redis_cert_file, &self.redis_key_file) {
            (Some(cert), Some(key)) => {
                Some(ClientIdentity::load("--redis-cert-file", cert, "--redis-key-file", key)?)
            }
            _ => None,
        };
        Ok(RedisOptions { target, tls: RedisTls { ca, identity }, keys, timeouts: RedisTimeouts::default() })
    }
}

/// Burst detection and alerts (`POST /v1/burst/report`).
#[derive(Args, Clone, Default)]
pub struct BurstArgs {
    /// A client address sending more than this many requests within --burst-window
    /// raises an alert.
    #[arg(
        long,
        env = "PORTCULLIS_BURST_THRESHOLD",
        default_value_t = 50,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub burst_threshold: u64,

    /// The sliding window bursts are counted over (e.g. `10s`, `1m`; at most 1 day).
    #[arg(long, env = "PORTCULLIS_BURST_WINDOW", default_value = "10s", value_parser = parse_duration_secs)]
    pub burst_window: u64,

    /// At most one alert per address per cooldown, across all replicas.
    #[arg(long, env = "PORTCULLIS_BURST_COOLDOWN", default_value = "60s", value_parser = parse_duration_secs)]
    pub burst_cooldown: u64,

    /// Post alerts (signed JSON) to this URL; repeat for several (comma-separated in
    /// the environment variable). Needs a webhook secret.
    #[arg(
        long = "burst-webhook-url",
        env = "PORTCULLIS_BURST_WEBHOOK_URLS",
        value_delimiter = ',',
        value_parser = crate::webhooks::parse_webhook_url
    )]
    pub burst_webhook_urls: Vec<reqwest::Url>,

    /// The secret alerts are signed with (prefer --burst-webhook-secret-file).
    #[arg(
        long,
        env = "PORTCULLIS_BURST_WEBHOOK_SECRET",
        hide_env_values = true,
        conflicts_with = "burst_webhook_secret_file"
    )]
    pub burst_webhook_secret: Option<String>,

    /// A file holding the webhook signing secret (surrounding whitespace ignored).
    #[arg(long, env = "PORTCULLIS_BURST_WEBHOOK_SECRET_FILE")]
    pub burst_webhook_secret_file: Option<PathBuf>,

    /// The secret being rotated out (prefer --burst-webhook-previous-secret-file): it
    /// signs too (a second `v1=`) until --burst-webhook-previous-secret-until.
    #[arg(
        long,
        env = "PORTCULLIS_BURST_WEBHOOK_PREVIOUS_SECRET",
        hide_env_values = true,
        conflicts_with = "burst_webhook_previous_secret_file"
    )]
    pub burst_webhook_previous_secret: Option<String>,

    /// A file holding the secret being rotated out.
    #[arg(long, env = "PORTCULLIS_BURST_WEBHOOK_PREVIOUS_SECRET_FILE")]
    pub burst_webhook_previous_secret_file: Option<PathBuf>,

    /// When the rotation window closes (Unix seconds, e.g. `date -d +24hours +%s`):
    /// from then on only the current secret signs.
    #[arg(long, env = "PORTCULLIS_BURST_WEBHOOK_PREVIOUS_SECRET_UNTIL")]
    pub burst_webhook_previous_secret_until: Option<u64>,

    /// How long an alert is retried before it becomes a dead letter (`30m`, `1h`; at
    /// most 30 days).
    #[arg(long, env = "PORTCULLIS_BURST_WEBHOOK_DEADLINE", default_value = "1h", value_parser = parse_duration_secs)]
    pub burst_webhook_deadline: u64,

    /// Most alerts waiting for delivery (all replicas together); more are dropped.
    #[arg(
        long,
        env = "PORTCULLIS_BURST_WEBHOOK_OUTBOX",
        default_value_t = crate::webhooks::DEFAULT_OUTBOX_CAPACITY as u64,
        value_parser = clap::value_parser!(u64).range(1..=1_000_000)
    )]
    pub burst_webhook_outbox: u64,

    /// Also block a bursting address for this long (e.g. `300s`, `15m`); the filter
    /// learns it from the report's answer. Off by default.
    #[arg(long, env = "PORTCULLIS_BURST_BLOCK", value_parser = parse_duration_secs)]
    pub burst_block: Option<u64>,
}

impl std::fmt::Debug for BurstArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BurstArgs")
            .field("burst_threshold", &self.burst_threshold)
            .field("burst_window", &self.burst_window)
            .field("burst_cooldown", &self.burst_cooldown)
            .field("burst_webhook_urls", &self.burst_webhook_urls.len())
            .field("burst_webhook_secret", &self.burst_webhook_secret.as_ref().map(|_| ".."))
            .field("burst_webhook_secret_file", &self.burst_webhook_secret_file)
            .field(
                "burst_webhook_previous_secret",
                &self.burst_webhook_previous_secret.as_ref().map(|_| ".."),
            )
            .field("burst_webhook_previous_secret_file", &self.burst_webhook_previous_secret_file)
            .field("burst_webhook_previous_secret_until", &self.burst_webhook_previous_secret_until)
            .field("burst_webhook_deadline", &self.burst_webhook_deadline)
            .field("burst_webhook_outbox", &self.burst_webhook_outbox)
            .field("burst_block", &self.burst_block)
            .finish()
    }
}

impl BurstArgs {
    /// The validated configuration, the secrets read from their files if given.
    pub fn load(&self) -> Result<crate::burst::BurstConfig, crate::burst::BurstConfigError> {
        use crate::burst::BurstConfig;
        use crate::webhooks::{PreviousSecret, WebhookConfig, WebhookConfigError};
        let secret =
            load_secret(self.burst_webhook_secret.as_deref(), self.burst_webhook_secret_file.as_deref())?;
        let previous = load_secret(
            self.burst_webhook_previous_secret.as_deref(),
            self.burst_webhook_previous_secret_file.as_deref(),
        )?;
        let previous_secret = match (previous, self.burst_webhook_previous_secret_until) {
            (Some(secret), Some(until)) => {
                Some(PreviousSecret { secret, until_ms: until.saturating_mul(1000) })
            }
            (None, None) => None,
            _ => return Err(WebhookConfigError::PreviousSecretWindow.into()),
        };
        let config = BurstConfig {
            threshold: self.burst_threshold,
            window_secs: self.burst_window,
            cooldown_secs: self.burst_cooldown,
            block_secs: self.burst_block,
            webhooks: WebhookConfig {
                urls: self.burst_webhook_urls.clone(),
                secret,
                previous_secret,
                deadline_secs: self.burst_webhook_deadline,
                outbox_capacity: usize::try_from(self.burst_webhook_outbox).unwrap_or(usize::MAX),
                // --webhook-ca-file is shared by every webhook: see ServerConfig::webhook_ca.
                ca: None,
                ..WebhookConfig::default()
            },
        };
        config.validate()?;
        Ok(config)
    }
}

/// A webhook secret given inline or in a file.
fn load_secret(
    text: Option<&str>,
    file: Option<&std::path::Path>,
) -> Result<Option<crate::webhooks::WebhookSecret>, crate::webhooks::WebhookConfigError> {
    use crate::webhooks::{WebhookConfigError, WebhookSecret};
    read_secret(text, file)
        .map_err(|(path, source)| WebhookConfigError::UnreadableSecret { path, source })?
        .map(|text| WebhookSecret::new(&text))
        .transpose()
}

/// Installs the global `tracing` subscriber (level from `RUST_LOG`, default `info`).
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    // A subscriber may already be installed (tests); keep it.
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_token_is_read_from_a_file_and_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "from-a-file-0123456789\n").unwrap();
        let args = AdminTokenArgs { admin_token: None, admin_token_file: Some(path) };
        assert_eq!(args.load().unwrap(), "from-a-file-0123456789");
    }

    #[test]
    fn missing_admin_token_is_an_error_that_names_the_options() {
        let message = AdminTokenArgs::default().load().unwrap_err().to_string();
        assert!(message.contains("--admin-token-file"));
        assert!(message.contains("PORTCULLIS_ADMIN_TOKEN"));
    }

    #[test]
    fn defaults_match_the_documentation() {
        let config = ServerConfig::try_parse_from(["portcullis-control-plane"]).unwrap();
        assert_eq!(config.admin_listen.to_string(), "127.0.0.1:9090");
        assert_eq!(config.internal_listen.to_string(), "127.0.0.1:9091");
        assert_eq!(config.listen, None);
        assert_eq!(config.store, StoreKind::Embedded);
        assert_eq!(config.data_dir, PathBuf::from("./data"));
        assert_eq!(config.access_token_ttl, 900);
        assert_eq!(config.issuer, "portcullis");
        assert!(ServerConfig::try_parse_from(["x", "--access-token-ttl", "0"]).is_err());
        assert_eq!(config.refresh_token_ttl, 7 * 86_400);
        assert_eq!(config.key_overlap, 86_400);
        assert_eq!(config.rotate_every, None);
        assert_eq!(config.signing_alg, SigningAlgorithm::Es256);
        assert_eq!(config.feed_keep, 100_000);
        assert_eq!(config.api_token_max_ttl, 365 * 86_400);
        assert_eq!(config.api_token_policy().unwrap().prefix, "pct");
        let burst = config.burst.load().unwrap();
        assert_eq!(
            (burst.threshold, burst.window_secs, burst.cooldown_secs, burst.block_secs),
            (50, 10, 60, None)
        );
        assert!(burst.webhooks.urls.is_empty());
        assert_eq!((burst.webhooks.deadline_secs, burst.webhooks.outbox_capacity), (3_600, 10_000));
    }

    #[test]
    fn a_burst_webhook_needs_a_secret() {
        let config =
            ServerConfig::try_parse_from(["x", "--burst-webhook-url", "https://hooks.example/a"]).unwrap();
        let message = config.burst.load().unwrap_err().to_string();
        assert!(message.contains("--burst-webhook-secret-file"), "{message}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "0123456789abcdef0123\n").unwrap();
        let config = ServerConfig::try_parse_from([
            "x",
            "--burst-webhook-url",
            "https://hooks.example/a",
            "--burst-webhook-url",
            "http://127.0.0.1:8080/b",
            "--burst-webhook-secret-file",
            path.to_str().unwrap(),
            "--burst-block",
            "5m",
            "--burst-window",
            "30s",
        ])
        .unwrap();
        let burst = config.burst.load().unwrap();
        assert_eq!(burst.webhooks.urls.len(), 2);
        assert_eq!(burst.webhooks.secret.unwrap().as_bytes(), b"0123456789abcdef0123");
        assert_eq!((burst.block_secs, burst.window_secs), (Some(300), 30));
        assert!(ServerConfig::try_parse_from(["x", "--burst-threshold", "0"]).is_err());
        assert!(ServerConfig::try_parse_from(["x", "--burst-webhook-url", "not a url"]).is_err());
    }

    #[test]
    fn fleet_credentials_come_from_values_or_files_and_must_be_strong() {
        let dir = tempfile::tempdir().unwrap();
        let (new, old) = ("n".repeat(40), "o".repeat(40));
        let path = dir.path().join("previous");
        std::fs::write(&path, format!("{old}\n")).unwrap();
        let args = FleetCredentialArgs {
            fleet_credential: Some(new.clone()),
            fleet_credential_previous_file: Some(path),
            ..FleetCredentialArgs::default()
        };
        let accepted = args.load().unwrap();
        assert!(accepted.accepts(&new) && accepted.accepts(&old));
        let message = FleetCredentialArgs::default().load().unwrap_err().to_string();
        assert!(
            message.contains("--fleet-credential-file") && message.contains("PORTCULLIS_FLEET_CREDENTIAL")
        );
        let weak =
            FleetCredentialArgs { fleet_credential: Some("short".into()), ..FleetCredentialArgs::default() };
        let message = weak.load().unwrap_err().to_string();
        assert!(message.contains("at least 32") && !message.contains("short"), "{message}");
        let missing_file = FleetCredentialArgs {
            fleet_credential: Some(new),
            fleet_credential_previous_file: Some(dir.path().join("nope")),
            ..FleetCredentialArgs::default()
        };
        assert!(missing_file.load().unwrap_err().to_string().contains("cannot read"));
    }

    #[test]
    fn redis_is_one_server_or_a_cluster_of_seed_nodes() {
        let config = ServerConfig::try_parse_from(["x", "--store", "redis"]).unwrap();
        assert_eq!(config.redis.redis_key_prefix, "portcullis");
        assert!(matches!(config.redis.load(), Err(RedisConfigError::MissingTarget)));

        let config =
            ServerConfig::try_parse_from(["x", "--redis-url", "rediss://:pw@redis.internal:6380/2"]).unwrap();
        let options = config.redis.load().unwrap();
        assert_eq!(options.target, RedisTarget::Server("rediss://:pw@redis.internal:6380/2".into()));
        assert_eq!(options.keys.prefix(), "portcullis");

        let config = ServerConfig::try_parse_from([
            "x",
            "--redis-cluster-nodes",
            "redis://10.0.0.1:6379,redis://10.0.0.2:6379",
            "--redis-cluster-nodes",
            "redis://10.0.0.3:6379",
            "--redis-key-prefix",
            "staging",
        ])
        .unwrap();
        let options = config.redis.load().unwrap();
        assert_eq!(
            options.target,
            RedisTarget::Cluster(vec![
                "redis://10.0.0.1:6379".into(),
                "redis://10.0.0.2:6379".into(),
                "redis://10.0.0.3:6379".into()
            ])
        );
        assert_eq!(options.keys.prefix(), "staging");

        let both = ServerConfig::try_parse_from([
            "x",
            "--redis-url",
            "redis://a:6379",
            "--redis-cluster-nodes",
            "redis://b:6379",
        ]);
        assert!(both.is_err(), "one server or a cluster, not both");
        let half = ServerConfig::try_parse_from([
            "x",
            "--redis-url",
            "rediss://a:6379",
            "--redis-cert-file",
            "c.pem",
        ]);
        assert!(half.is_err(), "a client certificate needs its key");
    }

    #[test]
    fn tls_files_for_redis_need_a_rediss_url() {
        let config = ServerConfig::try_parse_from([
            "x",
            "--redis-cluster-nodes",
            "rediss://a:6379,redis://b:6379",
            "--redis-ca-file",
            "/etc/ca.pem",
        ])
        .unwrap();
        let message = config.redis.load().unwrap_err().to_string();
        assert_eq!(message, "--redis-ca-file needs a rediss:// URL: the Redis connection is not TLS");
    }

    #[test]
    fn a_previous_webhook_secret_needs_the_end_of_its_window() {
        let base = ["x", "--burst-webhook-url", "https://hooks.example/a", "--burst-webhook-secret"];
        let with = |extra: &[&str]| {
            let args: Vec<&str> =
                base.iter().copied().chain(["new-secret-0123456789"]).chain(extra.iter().copied()).collect();
            ServerConfig::try_parse_from(args).unwrap().burst.load()
        };
        let message =
            with(&["--burst-webhook-previous-secret", "old-secret-0123456789"]).unwrap_err().to_string();
        assert!(message.contains("--burst-webhook-previous-secret-until"), "{message}");
        assert!(with(&["--burst-webhook-previous-secret-until", "1700000000"]).is_err());
        let config = with(&[
            "--burst-webhook-previous-secret",
            "old-secret-0123456789",
            "--burst-webhook-previous-secret-until",
            "1700000000",
            "--burst-webhook-deadline",
            "30m",
            "--burst-webhook-outbox",
            "5",
        ])
        .unwrap();
        let previous = config.webhooks.previous_secret.unwrap();
        assert_eq!(
            (previous.secret.as_bytes(), previous.until_ms),
            (&b"old-secret-0123456789"[..], 1_700_000_000_000)
        );
        assert_eq!((config.webhooks.deadline_secs, config.webhooks.outbox_capacity), (1_800, 5));
        assert!(ServerConfig::try_parse_from(["x", "--burst-webhook-outbox", "0"]).is_err());
    }

    #[test]
    fn durations_take_units() {
        assert_eq!(parse_duration_secs("90"), Ok(90));
        assert_eq!(parse_duration_secs("15m"), Ok(900));
        assert_eq!(parse_duration_secs("24h"), Ok(86_400));
        assert_eq!(parse_duration_secs("7d"), Ok(604_800));
        assert!(parse_duration_secs("0").is_err());
        assert!(parse_duration_secs("5w").is_err());
        let config =
            ServerConfig::try_parse_from(["x", "--signing-alg", "EdDSA", "--rotate-every", "30d"]).unwrap();
        assert_eq!(config.signing_alg, SigningAlgorithm::EdDsa);
        assert_eq!(config.rotate_every, Some(30 * 86_400));
    }
}
