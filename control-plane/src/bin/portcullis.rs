//! `portcullis`: the operator CLI for the control plane's admin API.
//!
//! `TOKEN=$(portcullis token issue --sub alice)` prints just the token; errors go to
//! stderr as `title: detail` with a non-zero exit code.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use portcullis_control_plane::client::{ClientError, ControlPlaneClient};
use portcullis_control_plane::config::AdminTokenArgs;
use portcullis_control_plane::tokens::TokenRequest;
use serde_json::{Map, Value};

#[derive(Parser)]
#[command(name = "portcullis", version, about = "Talk to the Portcullis control plane")]
struct Cli {
    /// Base URL of the control plane.
    #[arg(
        long,
        env = "PORTCULLIS_URL",
        default_value = "http://127.0.0.1:9090",
        global = true
    )]
    url: String,

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
    /// Show the control plane's status (needs the admin token).
    Status,
    /// Check liveness and readiness; exits non-zero when not ready.
    Health,
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
        /// Print the whole JSON response instead of just the token.
        #[arg(long)]
        json: bool,
    },
}

fn parse_claim(raw: &str) -> Result<(String, Value), String> {
    let (key, value) = raw
        .split_once('=')
        .ok_or_else(|| format!("expected key=value, got {raw:?}"))?;
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
    #[error("cannot print JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("not ready: {0}")]
    NotReady(String),
}

async fn run(cli: Cli) -> Result<(), CliError> {
    let needs_admin = !matches!(cli.command, Command::Health);
    let token = if needs_admin {
        Some(cli.admin_token.load()?)
    } else {
        None
    };
    let client = ControlPlaneClient::new(&cli.url, token)?;
    match cli.command {
        Command::Token {
            command:
                TokenCommand::Issue {
                    sub,
                    scopes,
                    ttl,
                    audience,
                    claims,
                    json,
                },
        } => {
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
        Command::Status => {
            let status = client.status().await?;
            println!("{}", serde_json::to_string_pretty(&status)?);
        }
        Command::Health => {
            let health = client.health().await?;
            if let Some(reason) = health.not_ready_reason {
                return Err(CliError::NotReady(reason));
            }
            println!("alive: {}, ready: {}", health.alive, health.ready);
        }
    }
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("{error}");
            ExitCode::FAILURE
        }
    }
}
