//! Starting the service: resolve the master key, open the store, load (or create) the
//! signing key set, run periodic maintenance, serve the internal and the admin listener
//! until SIGTERM or SIGINT, then drain in-flight requests on both.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;

use crate::admin_credential::{AdminCredential, AdminCredentialError};
use crate::clock::SystemClock;
use crate::config::{AdminTokenError, FleetCredentialError, ServerConfig, StoreKind};
use crate::http::{admin_app, internal_app, AppState, Dependencies};
use crate::keys::{KeyPolicy, KeyRingError};
use crate::master_key::{MasterKey, MasterKeyError};
use crate::metrics::Metrics;
use crate::random::{OsRandom, RandomSource};
use crate::store::{EmbeddedStore, MemoryStore, RedisStore, Store, StoreError};
use crate::tokens::TokenPolicy;
use crate::tokens::MAX_TOKEN_TTL_SECONDS;

/// How long startup keeps retrying a store that is not reachable yet (Redis starting
/// next to us) before giving up.
const STARTUP_STORE_PATIENCE: Duration = Duration::from_secs(30);
/// How often maintenance (scheduled rotation, key retirement, feed trim) runs.
const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    AdminToken(#[from] AdminTokenError),
    #[error(transparent)]
    AdminCredential(#[from] AdminCredentialError),
    #[error(transparent)]
    FleetCredential(#[from] FleetCredentialError),
    #[error(
        "the admin token is also a fleet credential: every Envoy would hold the admin API; give them \
         different secrets"
    )]
    AdminTokenIsFleetCredential,
    #[error(
        "--listen (PORTCULLIS_LISTEN) was split in two: --internal-listen (PORTCULLIS_INTERNAL_LISTEN, \
         what Envoys call, default 127.0.0.1:9091) and --admin-listen (PORTCULLIS_ADMIN_LISTEN, the admin \
         API, default 127.0.0.1:9090); set those instead"
    )]
    ListenRemoved,
    #[error("--internal-listen and --admin-listen are both {0}: the two listeners need distinct addresses")]
    SameListenAddress(std::net::SocketAddr),
    #[error(transparent)]
    Redis(#[from] crate::config::RedisConfigError),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsConfigError),
    #[error("cannot open the {backend} store: {source}")]
    Store { backend: &'static str, source: StoreError },
    #[error("cannot load or create the signing keys: {0}")]
    SigningKey(#[from] KeyRingError),
    #[error("master key: {0}")]
    MasterKey(#[from] MasterKeyError),
    #[error(
        "--store redis needs a master key shared by all replicas: set --master-key-file \
         (PORTCULLIS_MASTER_KEY_FILE) or --master-key (PORTCULLIS_MASTER_KEY), 32 bytes base64 \
         (e.g. `head -c 32 /dev/urandom | base64`)"
    )]
    MissingMasterKey,
    #[error(transparent)]
    Burst(#[from] crate::burst::BurstConfigError),
    #[error("{0}")]
    ApiTokens(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: std::net::SocketAddr, source: std::io::Error },
    #[error("server failed: {0}")]
    Serve(std::io::Error),
}

/// Builds the configured store.
pub fn open_store(config: &ServerConfig) -> Result<Arc<dyn Store>, StartupError> {
    Ok(match config.store {
        StoreKind::Memory => Arc::new(MemoryStore::new()),
        StoreKind::Embedded => Arc::new(
            EmbeddedStore::open(&config.data_dir)
                .map_err(|source| StartupError::Store { backend: "embedded", source })?,
        ),
        StoreKind::Redis => Arc::new(
            RedisStore::open(config.redis.load()?)
                .map_err(|source| StartupError::Store { backend: "redis", source })?,
        ),
    })
}

/// The configured master key; for the embedded store one is generated into the data
/// directory when none is configured, for memory an ephemeral one. Redis replicas must
/// share one, so it is required there.
pub fn resolve_master_key(config: &ServerConfig, rng: &dyn RandomSource) -> Result<MasterKey, StartupError> {
    if let Some(text) = &config.master_key.master_key {
        return Ok(MasterKey::from_base64(text)?);
    }
    if let Some(path) = &config.master_key.master_key_file {
        return Ok(MasterKey::read_file(path)?);
    }
    match config.store {
        StoreKind::Redis => Err(StartupError::MissingMasterKey),
        StoreKind::Memory => {
            tracing::info!("no master key configured; using an ephemeral one (memory store)");
            Ok(MasterKey::generate(rng)?)
        }
        StoreKind::Embedded => {
            let (key, created) = MasterKey::load_or_create_in(&config.data_dir, rng)?;
            let path = config.data_dir.join(crate::master_key::MASTER_KEY_FILE_NAME);
            if created {
                tracing::warn!(path = %path.display(), "no master key configured; generated one (back it up: without it the signing keys cannot be decrypted)");
            } else {
                tracing::info!(path = %path.display(), "using the master key from the data directory");
            }
            Ok(key)
        }
    }
}

/// The master key being replaced, when one is configured.
pub fn resolve_previous_master_key(config: &ServerConfig) -> Result<Option<MasterKey>, StartupError> {
    let args = &config.master_key;
    if let Some(text) = &args.previous_master_key {
        return Ok(Some(MasterKey::from_base64(text)?));
    }
    Ok(args.previous_master_key_file.as_deref().map(MasterKey::read_file).transpose()?)
}

/// Runs the control plane until a shutdown signal.
pub async fn run(config: ServerConfig) -> Result<(), StartupError> {
    // Validate everything that needs no I/O first, so misconfiguration fails fast.
    if config.listen.is_some() {
        return Err(StartupError::ListenRemoved);
    }
    if config.admin_listen == config.internal_listen && config.admin_listen.port() != 0 {
        return Err(StartupError::SameListenAddress(config.admin_listen));
    }
    let admin_token = zeroize::Zeroizing::new(config.admin_token.load()?);
    let admin = AdminCredential::new(&admin_token)?;
    let fleet = config.fleet.load()?;
    if fleet.accepts(&admin_token) {
        return Err(StartupError::AdminTokenIsFleetCredential);
    }
    let api_token_policy = config.api_token_policy().map_err(StartupError::ApiTokens)?;
    let mut burst = config.burst.load()?;
    burst.webhooks.ca = config.webhook_ca()?;
    let store = open_store(&config)?;
    let master_key = resolve_master_key(&config, &OsRandom)?;
    let previous_master_key = resolve_previous_master_key(&config)?;
    let deps = Dependencies {
        store,
        admin: Arc::new(admin),
        fleet: Arc::new(fleet),
        token_policy: TokenPolicy {
            issuer: config.issuer.clone(),
            default_audience: config.audience.clone(),
            default_ttl_seconds: config.access_token_ttl,
            refresh_ttl_seconds: config.refresh_token_ttl,
        },
        clock: Arc::new(SystemClock),
        rng: Arc::new(OsRandom),
        metrics: Arc::new(Metrics::new()),
        master_key: Arc::new(master_key),
        key_policy: KeyPolicy {
            algorithm: config.signing_alg,
            overlap_ms: config.key_overlap.max(MAX_TOKEN_TTL_SECONDS).saturating_mul(1000),
            rotate_every_ms: config.rotate_every.map(|s| s.saturating_mul(1000)),
        },
        feed_keep: config.feed_keep,
    };
    let state = initialise_with_patience(deps, previous_master_key)
        .await?
        .with_burst_config(burst)?
        .with_api_token_policy(api_token_policy)
        .with_audit_retention(config.audit_retention_days.map(|days| days.saturating_mul(86_400_000)));
    let maintenance = tokio::spawn(maintain_periodically(state.clone()));
    let listeners = Listeners::bind(config.internal_listen, config.admin_listen).await?;
    tracing::info!(
        internal = %listeners.internal.local_addr().map_err(StartupError::Serve)?,
        admin = %listeners.admin.local_addr().map_err(StartupError::Serve)?,
        store = state.store.backend().as_str(),
        kid = state.keys.current(state.clock.now_ms()).await.current().kid(),
        "portcullis control plane listening"
    );
    let webhooks = std::sync::Arc::clone(&state.webhooks);
    let served = serve(listeners, state, shutdown_signal()).await;
    maintenance.abort();
    // Attempts under way finish; what is not delivered stays in the outbox.
    webhooks.stop().await;
    served?;
    tracing::info!("shut down");
    Ok(())
}

/// Re-seals the signing keys when they are still under the previous master key, then
/// initialises the state; retries while the store is not reachable yet.
async fn initialise_with_patience(
    deps: Dependencies,
    previous_master_key: Option<MasterKey>,
) -> Result<AppState, StartupError> {
    let deadline = Instant::now() + STARTUP_STORE_PATIENCE;
    loop {
        let resealed = match &previous_master_key {
            Some(previous) => {
                let now_ms = deps.clock.now_ms();
                crate::keys::reseal_key_set(
                    deps.store.as_ref(),
                    &deps.master_key,
                    previous,
                    deps.rng.as_ref(),
                    now_ms,
                )
                .await
                .map(|_| ())
            }
            None => Ok(()),
        };
        let initialised = match resealed {
            Ok(()) => AppState::initialise(deps.clone()).await,
            Err(error) => Err(error),
        };
        match initialised {
            Ok(state) => return Ok(state),
            Err(error) if error.is_transient() && Instant::now() < deadline => {
                tracing::warn!(error = %error, "store not reachable yet; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(error) => return Err(error.into()),
        }
    }
}

/// Runs [`AppState::maintain`] every [`MAINTENANCE_INTERVAL`]; failures are logged
/// and retried next time.
async fn maintain_periodically(state: AppState) {
    let mut interval = tokio::time::interval(MAINTENANCE_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let result = state.maintain().await;
        state.metrics.record_maintenance(result.is_ok(), state.clock.now_ms() as f64 / 1000.0);
        match result {
            Ok(done) => tracing::debug!(?done, "maintenance"),
            Err(error) => tracing::warn!(%error, "maintenance failed; retrying later"),
        }
    }
}

/// The two bound listeners.
pub struct Listeners {
    /// What Envoys call ([`internal_app`]).
    pub internal: TcpListener,
    /// The admin API and metrics ([`admin_app`]).
    pub admin: TcpListener,
}

impl Listeners {
    pub async fn bind(
        internal: std::net::SocketAddr,
        admin: std::net::SocketAddr,
    ) -> Result<Self, StartupError> {
        let bind = |addr| async move {
            TcpListener::bind(addr).await.map_err(|source| StartupError::Bind { addr, source })
        };
        Ok(Self { internal: bind(internal).await?, admin: bind(admin).await? })
    }
}

/// Serves both listeners until `shutdown` completes, then finishes in-flight requests
/// on both. If one listener fails, the other is shut down too.
pub async fn serve(
    listeners: Listeners,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartupError> {
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let stop = Arc::new(stop);
    let run = |listener: TcpListener, app: axum::Router| {
        let (stop, mut stopped) = (Arc::clone(&stop), stopped.clone());
        tokio::spawn(async move {
            let result = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.wait_for(|stop| *stop).await;
                })
                .await;
            // One listener ending (it failed) ends the other too.
            let _ = stop.send(true);
            result
        })
    };
    let internal = run(listeners.internal, internal_app(state.clone()));
    let admin = run(listeners.admin, admin_app(state));
    let on_signal = Arc::clone(&stop);
    let signal = tokio::spawn(async move {
        shutdown.await;
        let _ = on_signal.send(true);
    });
    let results = [internal.await, admin.await];
    signal.abort();
    for result in results {
        result.map_err(|e| StartupError::Serve(std::io::Error::other(e)))?.map_err(StartupError::Serve)?;
    }
    Ok(())
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
