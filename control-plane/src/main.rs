//! `portcullis-control-plane`: parse the configuration, set up logging, run.

use std::process::ExitCode;

use clap::Parser as _;
use portcullis_control_plane::config::{init_logging, ServerConfig};

#[tokio::main]
async fn main() -> ExitCode {
    let config = ServerConfig::parse();
    init_logging(config.log_format);
    match portcullis_control_plane::server::run(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "control plane failed");
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}
