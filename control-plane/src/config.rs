//! Command-line and environment configuration of the control plane.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, ValueEnum};

use crate::signing::SigningAlgorithm;

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
        let token = match (&self.admin_token, &self.admin_token_file) {
            (Some(token), _) => token.trim().to_owned(),
            (None, Some(path)) => std::fs::read_to_string(path)
                .map_err(|source| AdminTokenError::Unreadable { path: path.clone(), source })?
                .trim()
                .to_owned(),
            (None, None) => return Err(AdminTokenError::Missing),
        };
        if token.is_empty() {
            return Err(AdminTokenError::Empty);
        }
        Ok(token)
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
    /// A Redis server at --redis-url: shared by all replicas.
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
    /// Address to serve HTTP on.
    #[arg(long, env = "PORTCULLIS_LISTEN", default_value = "127.0.0.1:9090")]
    pub listen: SocketAddr,

    /// State store backend.
    #[arg(long, env = "PORTCULLIS_STORE", value_enum, default_value_t = StoreKind::Embedded)]
    pub store: StoreKind,

    /// Directory of the embedded store's database.
    #[arg(long, env = "PORTCULLIS_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// Redis URL for --store redis, e.g. redis://127.0.0.1:6379/0.
    #[arg(long, env = "PORTCULLIS_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,

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

    /// Change feed entries kept; followers further behind get a snapshot.
    #[arg(long, env = "PORTCULLIS_FEED_KEEP", default_value_t = crate::revocations::DEFAULT_FEED_KEEP)]
    pub feed_keep: usize,

    /// Log output format; the level comes from RUST_LOG (default `info`).
    #[arg(long, env = "PORTCULLIS_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    #[command(flatten)]
    pub burst: BurstArgs,
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
    match (text, file) {
        (Some(text), _) => Ok(Some(WebhookSecret::new(text)?)),
        (None, Some(path)) => {
            let text =
                zeroize::Zeroizing::new(std::fs::read_to_string(path).map_err(|source| {
                    WebhookConfigError::UnreadableSecret { path: path.to_owned(), source }
                })?);
            Ok(Some(WebhookSecret::new(&text)?))
        }
        (None, None) => Ok(None),
    }
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
        assert_eq!(config.listen.to_string(), "127.0.0.1:9090");
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
