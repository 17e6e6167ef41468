//! `portcullis`: the operator CLI for the control plane's admin API (the admin
//! listener, `--url`; `token refresh` goes to the internal listener, `--internal-url`),
//! and offline checks of plugin configurations (`portcullis config check|schema`, no
//! control plane needed).
//!
//! `TOKEN=$(portcullis token issue --sub alice)`, `portcullis api-tokens create …` and
//! `portcullis hmac-keys create|rotate …` print just the token or secret; other commands
//! print the JSON answer. Errors go to stderr as `title: detail` with a non-zero exit
//! code.

use std::io::Read as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use portcullis_control_plane::api_tokens::CreateApiToken;
use portcullis_control_plane::audit::query::{AuditQuery, Order, MAX_LIMIT};
use portcullis_control_plane::audit::{time_text, AuditRecord};
use portcullis_control_plane::client::{ClientError, ControlPlaneClient};
use portcullis_control_plane::config::{parse_duration_secs, AdminTokenArgs};
use portcullis_control_plane::config_check::Outcome;
use portcullis_control_plane::hmac_keys::{CreateHmacKey, HmacKeySecret, RotateHmacKey, SecretFormat};
use portcullis_control_plane::tls::CaBundle;
use portcullis_control_plane::tokens::TokenRequest;
use portcullis_core::wire::SubjectKind;
use serde_json::{Map, Value};

#[derive(Parser)]
#[command(name = "portcullis", version, about = "Talk to the Portcullis control plane")]
struct Cli {
    /// Base URL of the control plane's admin listener.
    #[arg(long, env = "PORTCULLIS_URL", default_value = "http://127.0.0.1:9090", global = true)]
    url: String,

    /// Base URL of the control plane's internal listener (only `token refresh` uses it:
    /// refresh token exchange is served there).
    #[arg(long, env = "PORTCULLIS_INTERNAL_URL", default_value = "http://127.0.0.1:9091", global = true)]
    internal_url: String,

    /// More CA certificates (PEM) to trust for an https:// --url, in addition to the
    /// built-in roots.
    #[arg(long, env = "PORTCULLIS_CA_FILE", global = true)]
    ca_file: Option<std::path::PathBuf>,

    #[command(flatten)]
    admin_token: AdminTokenArgs,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Access tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Long-lived API tokens of users.
    ApiTokens {
        #[command(subcommand)]
        command: ApiTokensCommand,
    },
    /// HMAC keys of signed requests (RFC 9421, Standard Webhooks).
    HmacKeys {
        #[command(subcommand)]
        command: HmacKeysCommand,
    },
    /// Signing keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Revoke a token (by jti or the token itself) or all tokens of a subject.
    Revoke {
        #[command(subcommand)]
        command: RevokeCommand,
    },
    /// After a breach: raise the global minimum token version.
    Breach {
        #[command(subcommand)]
        command: BreachCommand,
    },
    /// Sessions (refresh token families).
    Sessions {
        #[command(subcommand)]
        command: SessionsCommand,
    },
    /// Failed logins and locks (account lockout).
    Lockouts {
        #[command(subcommand)]
        command: LockoutsCommand,
    },
    /// The audit log: query, export, verify, checkpoint.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Webhook deliveries given up on (dead letters).
    Webhooks {
        #[command(subcommand)]
        command: WebhooksCommand,
    },
    /// Show the control plane's status (needs the admin token).
    Status,
    /// Check liveness and readiness; exits non-zero when not ready.
    Health {
        /// Wait up to this long (e.g. `10s`, `1m`) for the control plane to answer and be
        /// ready, for scripts that start it and then talk to it.
        #[arg(long, value_name = "DURATION", value_parser = parse_duration_secs)]
        wait: Option<u64>,
    },
    /// Print the OpenAPI 3.1 document of the admin and internal APIs (offline; the
    /// control plane serves the same at `/openapi.json` on its admin listener).
    Openapi,
    /// Plugin configurations, offline: check files, print the JSON Schema.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Compile every Portcullis configuration in the files with the filter's own
    /// compiler: plugin JSON, WasmPlugin, EnvoyFilter or Envoy bootstrap YAML (any
    /// number of documents; `-` reads standard input). Exit code 0: all valid;
    /// 1: an error (each printed with file, document and field); 2: a file cannot be read.
    Check {
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
    },
    /// Print the JSON Schema (draft 2020-12) of the plugin configuration.
    Schema,
}

/// How often `health --wait` asks again.
const HEALTH_POLL_INTERVAL: Duration = Duration::from_millis(200);

/// Exit code of `config check` when a file cannot be read (clap uses 2 for usage errors).
const EXIT_UNREADABLE: u8 = 2;

fn config_command(command: ConfigCommand) -> ExitCode {
    match command {
        ConfigCommand::Schema => {
            print!("{}", portcullis_core::schema::json_schema_text());
            ExitCode::SUCCESS
        }
        ConfigCommand::Check { files } => {
            let (mut valid, mut errors, mut unreadable) = (0, 0, 0);
            for path in files {
                let (name, read) = if path.as_os_str() == "-" {
                    let mut bytes = Vec::new();
                    ("<stdin>".to_owned(), std::io::stdin().read_to_end(&mut bytes).map(|_| bytes))
                } else {
                    (path.display().to_string(), std::fs::read(&path))
                };
                let bytes = match read {
                    Ok(bytes) => bytes,
                    Err(error) => {
                        eprintln!("{name}: cannot read: {error}");
                        unreadable += 1;
                        continue;
                    }
                };
                for finding in portcullis_control_plane::config_check::check_bytes(&name, &bytes) {
                    valid += usize::from(finding.outcome == Outcome::Valid);
                    errors += usize::from(finding.is_error());
                    println!("{finding}");
                }
            }
            println!("{valid} valid, {errors} errors, {unreadable} unreadable files");
            if unreadable > 0 {
                ExitCode::from(EXIT_UNREADABLE)
            } else if errors > 0 {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
    }
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Mint an access token.
    Issue {
        /// Subject (`sub`).
        #[arg(long)]
        sub: String,
        /// A scope; repeat for several.
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// Lifetime in seconds (server default when omitted).
        #[arg(long)]
        ttl: Option<u64>,
        /// Audience (`aud`; server default when omitted).
        #[arg(long)]
        audience: Option<String>,
        /// An extra claim as key=value; the value is JSON if it parses as JSON,
        /// otherwise a string. Repeat for several.
        #[arg(long = "claim", value_parser = parse_claim)]
        claims: Vec<(String, Value)>,
        /// Print the whole JSON response (with the refresh token and session id)
        /// instead of just the access token.
        #[arg(long)]
        json: bool,
    },
    /// Exchange a refresh token for a new access and refresh token (prints JSON).
    Refresh {
        /// The refresh token (single use).
        #[arg(allow_hyphen_values = true)]
        refresh_token: String,
    },
}

#[derive(Subcommand)]
enum ApiTokensCommand {
    /// Create a token; prints it (shown this once: store it now).
    Create {
        /// The user it acts for.
        #[arg(long, allow_hyphen_values = true)]
        user: String,
        /// What it is for ("CI deploy").
        #[arg(long)]
        name: String,
        /// A scope; repeat for several (at least one).
        #[arg(long = "scope", required = true)]
        scopes: Vec<String>,
        /// Lifetime (`90d`, `12h`, `30m`, `3600`), at most the server's maximum.
        #[arg(long, value_parser = parse_duration_secs)]
        expires_in: u64,
        /// Print the record with the token as JSON instead of just the token.
        #[arg(long)]
        json: bool,
    },
    /// List a user's tokens (never their secrets).
    List {
        #[arg(long, allow_hyphen_values = true)]
        user: String,
    },
    /// Show one token by id (the part between the two `_`).
    Show { id: String },
    /// Revoke one token by id, or every token of a user.
    Revoke(ApiTokenRevokeArgs),
}

#[derive(clap::Args)]
#[group(required = true, multiple = false)]
struct ApiTokenRevokeArgs {
    /// The token's id.
    id: Option<String>,
    /// Every token of this user.
    #[arg(long, allow_hyphen_values = true)]
    user: Option<String>,
}

#[derive(Subcommand)]
enum HmacKeysCommand {
    /// Create a key; prints its secret (shown this once: hand it to the client now).
    Create {
        /// The key id clients send (`keyid`).
        id: String,
        /// Who the key belongs to (sent upstream with the key id).
        #[arg(long)]
        owner: Option<String>,
        /// `base64` (32 random bytes, RFC 9421 clients) or `whsec` (`whsec_…`, Standard
        /// Webhooks senders).
        #[arg(long, default_value = "base64", value_parser = parse_secret_format)]
        format: SecretFormat,
        /// Print the key with the secret as JSON instead of just the secret.
        #[arg(long)]
        json: bool,
    },
    /// Add a new secret; prints it. The current secrets keep verifying for the overlap.
    Rotate {
        id: String,
        /// How long the current secrets keep verifying (`24h`, `2s`, `3600`).
        #[arg(long, default_value = "24h", value_parser = parse_duration_secs)]
        overlap: u64,
        #[arg(long)]
        json: bool,
    },
    /// List the keys with their secrets' times (never the secrets).
    List,
    /// Revoke a key at once: every Envoy refuses it within a poll.
    Revoke { id: String },
}

fn parse_secret_format(text: &str) -> Result<SecretFormat, String> {
    match text {
        "base64" => Ok(SecretFormat::Base64),
        "whsec" => Ok(SecretFormat::Whsec),
        _ => Err("`base64` or `whsec`".to_owned()),
    }
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Make a new signing key current now; the old one keeps verifying until it retires.
    Rotate,
    /// List the signing keys with their status.
    List,
    /// Revoke a signing key at once (it leaked): it leaves the JWKS, and every Envoy
    /// refuses the tokens it signed within a feed poll. Revoking the current key makes
    /// a new one current.
    Revoke(KeyRevokeArgs),
}

#[derive(clap::Args)]
#[group(required = true, multiple = false)]
struct KeyRevokeArgs {
    /// The key's id (`kid`, see `keys list`).
    #[arg(allow_hyphen_values = true)]
    kid: Option<String>,
    /// Every key, the current one included (the master key leaked).
    #[arg(long)]
    all: bool,
}

#[derive(Subcommand)]
enum RevokeCommand {
    /// Revoke one token by its id until its expiry.
    Jti {
        #[arg(allow_hyphen_values = true)]
        jti: String,
        /// The token's `exp` (Unix seconds).
        #[arg(long)]
        exp: u64,
    },
    /// Revoke an access token: its jti and exp are read from the token locally,
    /// WITHOUT verifying its signature.
    Token {
        #[arg(allow_hyphen_values = true)]
        access_token: String,
    },
    /// Revoke every token of a subject issued so far.
    User {
        #[arg(allow_hyphen_values = true)]
        sub: String,
    },
}

#[derive(Subcommand)]
enum BreachCommand {
    /// Raise the global minimum version: older tokens stop working after the grace period.
    Rotate {
        /// Seconds older tokens stay valid.
        #[arg(long, default_value_t = 0)]
        grace: u64,
        #[arg(long)]
        reason: String,
    },
}

#[derive(Subcommand)]
enum SessionsCommand {
    /// List a subject's sessions.
    List {
        #[arg(allow_hyphen_values = true)]
        sub: String,
    },
    /// Revoke a session: its refresh token and live access tokens stop working.
    Revoke {
        /// Session ids are base64url: they may start with `-`.
        #[arg(allow_hyphen_values = true)]
        sid: String,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Records, newest first, one line each (`--json`: the JSON records).
    List {
        #[command(flatten)]
        filters: AuditFilters,
        /// At most this many records.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    /// Every record since a time, oldest first, as JSON lines on stdout.
    Export {
        #[command(flatten)]
        filters: AuditFilters,
    },
    /// Walk the chain and its checkpoints; exits 1 when a record fails.
    Verify,
    /// Sign a checkpoint over the chain's head now.
    Checkpoint,
}

/// Filters of `audit list` and `audit export`; every one given must match.
#[derive(clap::Args)]
struct AuditFilters {
    /// A decision's token subject, or an admin record's target.
    #[arg(long, allow_hyphen_values = true)]
    subject: Option<String>,
    /// A decision's client address (also found when the filter recorded its keyed hash:
    /// the control plane hashes it with the fleet credentials).
    #[arg(long)]
    ip: Option<String>,
    /// A decision's `x-request-id`.
    #[arg(long)]
    request_id: Option<String>,
    /// A decision's rule.
    #[arg(long)]
    rule: Option<String>,
    #[arg(long, value_parser = ["allow", "deny", "shadow_deny"])]
    decision: Option<String>,
    /// A decision's reason (e.g. `expired_token`).
    #[arg(long)]
    reason: Option<String>,
    /// An action or its prefix up to a dot (`keys` matches `keys.rotate`).
    #[arg(long)]
    action: Option<String>,
    /// An actor (`admin:<fingerprint>`) or its kind (`admin`, `system`, `fleet`).
    #[arg(long)]
    actor: Option<String>,
    /// From this time: RFC 3339 (`2026-01-31T12:00:00Z`), Unix milliseconds, or a
    /// duration ago (`24h`, `7d`).
    #[arg(long, value_parser = parse_time_ms)]
    since: Option<u64>,
    /// Before this time (same forms as --since).
    #[arg(long, value_parser = parse_time_ms)]
    until: Option<u64>,
}

impl AuditFilters {
    fn query(self, order: Order) -> AuditQuery {
        AuditQuery {
            subject: self.subject,
            ip: self.ip,
            request_id: self.request_id,
            ip_hashes: Vec::new(),
            rule: self.rule,
            decision: self.decision,
            reason: self.reason,
            action: self.action,
            actor: self.actor,
            since: self.since,
            until: self.until,
            limit: None,
            cursor: None,
            order: Some(order),
        }
    }
}

/// RFC 3339 in UTC, Unix milliseconds (13 digits or more), or a duration before now.
fn parse_time_ms(text: &str) -> Result<u64, String> {
    if text.contains('T') {
        return time_text::parse_rfc3339_ms(text);
    }
    if text.len() >= 13 && text.bytes().all(|b| b.is_ascii_digit()) {
        return text.parse().map_err(|_| format!("{text:?} is not a time"));
    }
    let ago = parse_duration_secs(text)?;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    Ok(now_ms.saturating_sub(ago.saturating_mul(1000)))
}

/// One line of `audit list`.
fn audit_line(record: &AuditRecord) -> String {
    let mut line = format!(
        "{:>6}  {}  {:<9} {:<26} {:<28} {}",
        record.seq,
        time_text::format_rfc3339_ms(record.time),
        record.kind.as_str(),
        record.actor,
        record.action,
        record.target
    );
    if let Some(decision) = &record.decision {
        let status = decision.status.map(|s| s.to_string());
        let request = decision.method.as_ref().zip(decision.path.as_ref()).map(|(m, p)| format!("{m} {p}"));
        for (name, value) in [
            ("ip", &decision.client),
            ("rule", &decision.rule),
            ("reason", &decision.reason),
            ("status", &status),
            ("request", &request),
            ("id", &decision.request_id),
        ] {
            if let Some(value) = value {
                line.push_str(&format!("  {name}={value}"));
            }
        }
    }
    line
}

async fn audit_command(client: &ControlPlaneClient, command: AuditCommand) -> Result<ExitCode, CliError> {
    match command {
        AuditCommand::List { filters, limit, json } => {
            let mut query = filters.query(Order::Desc);
            let mut records = Vec::new();
            while records.len() < limit {
                query.limit = Some((limit - records.len()).min(MAX_LIMIT));
                let page = client.audit_page(&query).await?;
                records.extend(page.records);
                match page.next_cursor {
                    Some(cursor) => query.cursor = Some(cursor),
                    None => break,
                }
            }
            if json {
                print_json(&records)?;
            } else {
                records.iter().for_each(|r| println!("{}", audit_line(r)));
            }
        }
        AuditCommand::Export { filters } => {
            let mut query = filters.query(Order::Asc);
            query.limit = Some(MAX_LIMIT);
            loop {
                let page = client.audit_page(&query).await?;
                for record in &page.records {
                    println!("{}", serde_json::to_string(record)?);
                }
                match page.next_cursor {
                    Some(cursor) => query.cursor = Some(cursor),
                    None => break,
                }
            }
        }
        AuditCommand::Verify => {
            let verification = client.audit_verify().await?;
            print_json(&verification)?;
            if let Some(failure) = &verification.failure {
                eprintln!(
                    "audit log NOT intact: record {} fails ({:?}): {}",
                    failure.seq, failure.kind, failure.message
                );
                return Ok(ExitCode::FAILURE);
            }
            match verification.intact_through {
                Some(seq) => eprintln!("audit log intact through record {seq}"),
                None => eprintln!("audit log empty"),
            }
        }
        AuditCommand::Checkpoint => print_json(&client.audit_checkpoint().await?)?,
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Subcommand)]
enum WebhooksCommand {
    /// List the dead letters (oldest first) with their last error and payload.
    DeadLetters,
    /// Queue dead letters for delivery again, with a fresh deadline.
    Retry(DeadLetterArgs),
    /// Delete dead letters.
    Purge(DeadLetterArgs),
}

#[derive(clap::Args)]
#[group(required = true, multiple = false)]
struct DeadLetterArgs {
    /// A dead letter's id (see `webhooks dead-letters`).
    #[arg(allow_hyphen_values = true)]
    id: Option<String>,
    /// Every dead letter.
    #[arg(long)]
    all: bool,
}

#[derive(Subcommand)]
enum LockoutsCommand {
    /// List the accounts and addresses with failed logins or a lock (by key hash).
    List,
    /// Show one account's or address' failures and lock.
    Show(LockoutSubjectArgs),
    /// Forget one account's or address' failures and lock (audited by key hash).
    Clear(LockoutSubjectArgs),
}

#[derive(clap::Args)]
#[group(required = true, multiple = false)]
struct LockoutSubjectArgs {
    /// An account (username, email; case-insensitive).
    #[arg(long)]
    account: Option<String>,
    /// A client address (IPv4 or IPv6).
    #[arg(long)]
    ip: Option<String>,
}

impl LockoutSubjectArgs {
    fn subject(&self) -> (SubjectKind, &str) {
        match (&self.account, &self.ip) {
            (Some(account), _) => (SubjectKind::Account, account),
            (None, Some(ip)) => (SubjectKind::Ip, ip),
            // clap requires exactly one of them.
            (None, None) => (SubjectKind::Account, ""),
        }
    }
}

/// Reads `jti` and `exp` from a JWT's payload without verifying anything.
fn unverified_jti_and_exp(token: &str) -> Result<(String, u64), String> {
    use base64::Engine as _;
    let payload = token.split('.').nth(1).ok_or("not a JWT (expected header.payload.signature)")?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|_| "the JWT payload is not base64url")?;
    let claims: Value = serde_json::from_slice(&bytes).map_err(|_| "the JWT payload is not JSON")?;
    let jti = claims["jti"].as_str().ok_or("the token has no jti claim")?;
    let exp = claims["exp"].as_u64().ok_or("the token has no numeric exp claim")?;
    Ok((jti.to_owned(), exp))
}

fn parse_claim(raw: &str) -> Result<(String, Value), String> {
    let (key, value) = raw.split_once('=').ok_or_else(|| format!("expected key=value, got {raw:?}"))?;
    if key.is_empty() {
        return Err("the claim name is empty".to_owned());
    }
    let value = serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.to_owned()));
    Ok((key.to_owned(), value))
}

#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    AdminToken(#[from] portcullis_control_plane::config::AdminTokenError),
    #[error(transparent)]
    Tls(#[from] portcullis_control_plane::tls::TlsConfigError),
    #[error("cannot print JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("not ready: {0}")]
    NotReady(String),
    #[error("cannot read the token: {0}")]
    BadToken(String),
}

async fn run(cli: Cli) -> Result<ExitCode, CliError> {
    let refresh = matches!(cli.command, Command::Token { command: TokenCommand::Refresh { .. } });
    let needs_admin = !refresh
        && !matches!(cli.command, Command::Health { .. } | Command::Config { .. } | Command::Openapi);
    let token = if needs_admin { Some(cli.admin_token.load()?) } else { None };
    let ca = cli.ca_file.as_deref().map(|path| CaBundle::load("--ca-file", path)).transpose()?;
    let client =
        ControlPlaneClient::with_ca(if refresh { &cli.internal_url } else { &cli.url }, token, ca.as_ref())?;
    match cli.command {
        Command::Token { command: TokenCommand::Issue { sub, scopes, ttl, audience, claims, json } } => {
            let claims: Map<String, Value> = claims.into_iter().collect();
            let request = TokenRequest {
                sub,
                scopes,
                ttl_seconds: ttl,
                audience,
                claims: (!claims.is_empty()).then_some(claims),
            };
            let issued = client.issue_token(&request).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&issued)?);
            } else {
                println!("{}", issued.access_token);
            }
        }
        Command::Token { command: TokenCommand::Refresh { refresh_token } } => {
            print_json(&client.refresh_token(&refresh_token).await?)?
        }
        Command::ApiTokens { command } => match command {
            ApiTokensCommand::Create { user, name, scopes, expires_in, json } => {
                let request = CreateApiToken { user, name, scopes, expires_in: Some(expires_in) };
                let created = client.create_api_token(&request).await?;
                if json {
                    print_json(&created)?;
                } else {
                    println!("{}", created.token);
                }
            }
            ApiTokensCommand::List { user } => print_json(&client.list_api_tokens(&user).await?)?,
            ApiTokensCommand::Show { id } => print_json(&client.show_api_token(&id).await?)?,
            ApiTokensCommand::Revoke(ApiTokenRevokeArgs { id: Some(id), .. }) => {
                print_json(&client.revoke_api_token(&id).await?)?
            }
            ApiTokensCommand::Revoke(ApiTokenRevokeArgs { id: None, user }) => {
                // clap requires one of the two.
                print_json(&client.revoke_api_tokens_of(user.as_deref().unwrap_or_default()).await?)?
            }
        },
        Command::HmacKeys { command } => match command {
            HmacKeysCommand::Create { id, owner, format, json } => {
                let created = client.create_hmac_key(&CreateHmacKey { id, owner, format }).await?;
                print_secret(&created, json)?;
            }
            HmacKeysCommand::Rotate { id, overlap, json } => {
                let request = RotateHmacKey { overlap_seconds: Some(overlap) };
                print_secret(&client.rotate_hmac_key(&id, &request).await?, json)?;
            }
            HmacKeysCommand::List => print_json(&client.list_hmac_keys().await?)?,
            HmacKeysCommand::Revoke { id } => print_json(&client.revoke_hmac_key(&id).await?)?,
        },
        Command::Keys { command } => match command {
            KeysCommand::Rotate => print_json(&client.rotate_keys().await?)?,
            KeysCommand::List => print_json(&client.list_keys().await?)?,
            KeysCommand::Revoke(KeyRevokeArgs { kid, .. }) => {
                print_json(&client.revoke_keys(kid.as_deref()).await?)?
            }
        },
        Command::Revoke { command } => match command {
            RevokeCommand::Jti { jti, exp } => print_json(&client.revoke_jti(&jti, exp).await?)?,
            RevokeCommand::Token { access_token } => {
                let (jti, exp) = unverified_jti_and_exp(&access_token).map_err(CliError::BadToken)?;
                eprintln!("note: jti and exp were read from the token without verifying its signature");
                print_json(&client.revoke_jti(&jti, exp).await?)?;
            }
            RevokeCommand::User { sub } => print_json(&client.revoke_user(&sub).await?)?,
        },
        Command::Breach { command: BreachCommand::Rotate { grace, reason } } => {
            print_json(&client.rotate_global(&reason, grace).await?)?
        }
        Command::Sessions { command } => match command {
            SessionsCommand::List { sub } => print_json(&client.user_sessions(&sub).await?)?,
            SessionsCommand::Revoke { sid } => print_json(&client.revoke_session(&sid).await?)?,
        },
        Command::Lockouts { command } => match command {
            LockoutsCommand::List => print_json(&client.list_lockouts().await?)?,
            LockoutsCommand::Show(subject) => {
                let (kind, value) = subject.subject();
                print_json(&client.show_lockout(kind, value).await?)?
            }
            LockoutsCommand::Clear(subject) => {
                let (kind, value) = subject.subject();
                print_json(&client.clear_lockout(kind, value).await?)?
            }
        },
        Command::Audit { command } => return audit_command(&client, command).await,
        Command::Webhooks { command } => match command {
            WebhooksCommand::DeadLetters => print_json(&client.dead_letters().await?)?,
            WebhooksCommand::Retry(DeadLetterArgs { id, .. }) => {
                print_json(&client.retry_dead_letters(id.as_deref()).await?)?
            }
            WebhooksCommand::Purge(DeadLetterArgs { id, .. }) => {
                print_json(&client.purge_dead_letters(id.as_deref()).await?)?
            }
        },
        Command::Status => {
            let status = client.status().await?;
            println!("{}", serde_json::to_string_pretty(&status)?);
        }
        Command::Config { command } => return Ok(config_command(command)),
        Command::Openapi => print!("{}", portcullis_control_plane::http::openapi::document_text()),
        Command::Health { wait } => {
            let deadline = Instant::now() + Duration::from_secs(wait.unwrap_or(0));
            let health = loop {
                let outcome = match client.health().await {
                    Ok(health) => match health.not_ready_reason {
                        Some(reason) => Err(CliError::NotReady(reason)),
                        None => Ok(health),
                    },
                    Err(error) => Err(error.into()),
                };
                match outcome {
                    Ok(health) => break health,
                    Err(error) if Instant::now() >= deadline => return Err(error),
                    Err(_) => tokio::time::sleep(HEALTH_POLL_INTERVAL).await,
                }
            };
            println!("alive: {}, ready: {}", health.alive, health.ready);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A new HMAC secret: just the secret, or the key with it as JSON.
fn print_secret(created: &HmacKeySecret, json: bool) -> Result<(), CliError> {
    if json {
        print_json(created)
    } else {
        println!("{}", created.secret);
        Ok(())
    }
}

fn print_json<T: serde::Serialize>(value: &T) -> Result<(), CliError> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("{error}");
            ExitCode::FAILURE
        }
    }
}
