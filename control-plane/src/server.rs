//! Starting the service: open the store, make sure a signing key exists, serve HTTP
//! until SIGTERM or SIGINT, then drain in-flight requests.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;

use crate::admin_credential::{AdminCredential, AdminCredentialError};
use crate::clock::SystemClock;
use crate::config::{AdminTokenError, ServerConfig, StoreKind};
use crate::http::{app, AppState, Dependencies};
use crate::metrics::Metrics;
use crate::random::OsRandom;
use crate::signing::SigningKeyError;
use crate::store::redis::RedisTimeouts;
use crate::store::{EmbeddedStore, MemoryStore, RedisStore, Store, StoreError};
use crate::tokens::TokenPolicy;

/// How long startup keeps retrying a store that is not reachable yet (Redis starting
/// next to us) before giving up.
const STARTUP_STORE_PATIENCE: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    AdminToken(#[from] AdminTokenError),
    #[error(transparent)]
    AdminCredential(#[from] AdminCredentialError),
    #[error("--store redis needs --redis-url (PORTCULLIS_REDIS_URL)")]
    MissingRedisUrl,
    #[error("cannot open the {backend} store: {source}")]
    Store {
        backend: &'static str,
        source: StoreError,
    },
    #[error("cannot load or create the signing key: {0}")]
    SigningKey(#[from] SigningKeyError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("server failed: {0}")]
    Serve(std::io::Error),
}

/// Builds the configured store.
pub fn open_store(config: &ServerConfig) -> Result<Arc<dyn Store>, StartupError> {
    Ok(match config.store {
        StoreKind::Memory => Arc::new(MemoryStore::new()),
        StoreKind::Embedded => {
            Arc::new(
                EmbeddedStore::open(&config.data_dir).map_err(|source| StartupError::Store {
                    backend: "embedded",
                    source,
                })?,
            )
        }
        StoreKind::Redis => {
            let url = config.redis_url.as_deref().ok_or(StartupError::MissingRedisUrl)?;
            Arc::new(RedisStore::new(url, RedisTimeouts::default()).map_err(|source| {
                StartupError::Store {
                    backend: "redis",
                    source,
                }
            })?)
        }
    })
}

/// Runs the control plane until a shutdown signal.
pub async fn run(config: ServerConfig) -> Result<(), StartupError> {
    // Validate everything that needs no I/O first, so misconfiguration fails fast.
    let admin = AdminCredential::new(&config.admin_token.load()?)?;
    let store = open_store(&config)?;
    let deps = Dependencies {
        store,
        admin: Arc::new(admin),
        token_policy: TokenPolicy {
            issuer: config.issuer.clone(),
            default_audience: config.audience.clone(),
            default_ttl_seconds: config.access_token_ttl,
        },
        clock: Arc::new(SystemClock),
        rng: Arc::new(OsRandom),
        metrics: Arc::new(Metrics::new()),
    };
    let state = initialise_with_patience(deps).await?;
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| StartupError::Bind {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(StartupError::Serve)?;
    tracing::info!(
        %addr,
        store = state.store.backend().as_str(),
        kid = state.signing_key.kid(),
        "portcullis control plane listening"
    );
    serve(listener, state, shutdown_signal()).await?;
    tracing::info!("shut down");
    Ok(())
}

async fn initialise_with_patience(deps: Dependencies) -> Result<AppState, StartupError> {
    let deadline = Instant::now() + STARTUP_STORE_PATIENCE;
    loop {
        match AppState::initialise(deps.clone()).await {
            Ok(state) => return Ok(state),
            Err(error) if error.is_transient() && Instant::now() < deadline => {
                tracing::warn!(error = %error, "store not reachable yet; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(error) => return Err(error.into()),
        }
    }
}

/// Serves the API on `listener` until `shutdown` completes, then finishes in-flight
/// requests.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartupError> {
    axum::serve(listener, app(state))
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(StartupError::Serve)
}

/// Completes on SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    let interrupt = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => tracing::info!("SIGINT received; shutting down"),
        () = terminate => tracing::info!("SIGTERM received; shutting down"),
    }
}
