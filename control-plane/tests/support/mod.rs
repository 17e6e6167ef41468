//! Test helpers shared by the integration tests: a real `redis-server` on a free port
//! (plain, TLS, or three of them as a Redis Cluster), every store backend, a test PKI
//! and small utilities.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod pki;
pub mod redis_modes;

use std::ffi::OsString;
use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// A loopback port nothing listens on right now, never handed out twice by this test
/// process. Ports come from below the kernel's ephemeral range (32768 and up on Linux):
/// a port from that range, free when probed, can be taken as the source port of any
/// outgoing connection before the server meant for it binds. The range is not the
/// end-to-end tests' (15000 and up), and starts at an offset from the process id.
pub fn free_port() -> u16 {
    const FIRST: u16 = 10_000;
    const COUNT: u16 = 5_000;
    static NEXT: Mutex<Option<u16>> = Mutex::new(None);
    let mut next = NEXT.lock().unwrap_or_else(|e| e.into_inner());
    let mut offset = next.unwrap_or((std::process::id() % u32::from(COUNT)) as u16);
    for _ in 0..COUNT {
        let port = FIRST + offset;
        offset = (offset + 1) % COUNT;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            *next = Some(offset);
            return port;
        }
    }
    panic!("no free loopback port in {FIRST}..{}", FIRST + COUNT)
}

/// `n` different ports nothing listens on right now.
pub fn free_ports(n: usize) -> Vec<u16> {
    (0..n).map(|_| free_port()).collect()
}

/// Runs `command` to its end, or kills it after `limit`; its output and whether it
/// ended by itself. (Its output must fit the pipes: a few KiB, as our tools print.)
pub fn output_within(command: &mut Command, limit: Duration) -> (Output, bool) {
    let mut child = command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let deadline = Instant::now() + limit;
    let mut in_time = true;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            in_time = false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    (child.wait_with_output().unwrap(), in_time)
}

/// A binary from `$<env>`, else `PATH`, else `/usr/bin`.
pub fn binary(name: &str, env: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(env) {
        return PathBuf::from(path);
    }
    let candidates: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join(name)).collect())
        .unwrap_or_default();
    candidates.into_iter().chain([PathBuf::from("/usr/bin").join(name)]).find(|p| p.is_file()).unwrap_or_else(
        || {
            panic!(
                "{name} not found: the Redis tests need a real Redis. Install it \
             (Debian: apt-get install redis-server) or set {env}"
            )
        },
    )
}

/// What the log of a redis-server says when it is up.
const READY_LINE: &str = "Ready to accept connections";

/// A `redis-server` child process on 127.0.0.1, stopped on drop.
///
/// The server runs under a tiny `sh` watchdog that kills it when our end of its stdin
/// closes, which happens however this process ends (drop, panic, abort, SIGKILL), so
/// no server outlives the test binary even when it is held in a `static`; the
/// watchdog then also removes the server's directory (a `static` is never dropped),
/// unless told `keep` by [`RedisServer::stop`].
///
/// Ports are picked free and picked again when another process takes one before the
/// server binds it; a server is up when its own log says so and it answers `PING`
/// (so a server of someone else on a reused port is never mistaken for ours).
pub struct RedisServer {
    port: u16,
    /// Further listening ports by flag (`--tls-port`, `--cluster-port`).
    extra_ports: Vec<(&'static str, u16)>,
    extra_args: Vec<OsString>,
    dir: tempfile::TempDir,
    launches: u32,
    watchdog: Option<(Child, ChildStdin)>,
}

enum LaunchError {
    PortTaken,
    NotReady(String),
}

impl RedisServer {
    pub fn start() -> Self {
        Self::start_with(&[], &[])
    }

    /// A server with more listening ports (each flag of `port_flags`, e.g.
    /// `--tls-port`, gets a free port) and more arguments.
    pub fn start_with(port_flags: &[&'static str], args: &[OsString]) -> Self {
        Self::start_in(tempfile::tempdir().expect("temp dir for redis-server"), port_flags, args)
    }

    /// Like [`RedisServer::start_with`], in `dir` (which may hold files the server
    /// needs, such as certificates: they go with it).
    pub fn start_in(dir: tempfile::TempDir, port_flags: &[&'static str], args: &[OsString]) -> Self {
        let mut server = Self {
            port: 0,
            extra_ports: Vec::new(),
            extra_args: args.to_vec(),
            dir,
            launches: 0,
            watchdog: None,
        };
        for _ in 0..10 {
            let ports = free_ports(1 + port_flags.len());
            server.port = ports[0];
            server.extra_ports = port_flags.iter().copied().zip(ports[1..].iter().copied()).collect();
            match server.launch() {
                Ok(()) => return server,
                Err(LaunchError::PortTaken) => server.end_watchdog(),
                Err(LaunchError::NotReady(log)) => panic!("{log}"),
            }
        }
        panic!("redis-server: every port tried was taken by another process");
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The port given to `flag` (e.g. `--tls-port`).
    pub fn port_of(&self, flag: &str) -> u16 {
        self.extra_ports.iter().find(|(f, _)| *f == flag).map(|(_, port)| *port).unwrap()
    }

    pub fn url(&self, db: u32) -> String {
        format!("redis://127.0.0.1:{}/{db}", self.port)
    }

    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Starts the server (again) on the same ports, with the same directory.
    pub fn start_again(&mut self) {
        if let Err(error) = self.launch() {
            match error {
                LaunchError::PortTaken => panic!("redis-server port {} was taken meanwhile", self.port),
                LaunchError::NotReady(log) => panic!("{log}"),
            }
        }
    }

    fn launch(&mut self) -> Result<(), LaunchError> {
        assert!(self.watchdog.is_none(), "redis-server already running");
        let binary = binary("redis-server", "REDIS_SERVER_BIN");
        self.launches += 1;
        let log = self.dir.path().join(format!("redis-{}.log", self.launches));
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(
                r#""$0" "$@" & server=$!; read -r keep; kill "$server"; wait "$server"
                   [ "$keep" = keep ] || rm -rf -- "$REDIS_TEST_DIR""#,
            )
            .arg(&binary)
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(["--databases", "256"])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(&log);
        for (flag, port) in &self.extra_ports {
            command.arg(flag).arg(port.to_string());
        }
        let mut child = command
            .args(&self.extra_args)
            .env("REDIS_TEST_DIR", self.dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        let stdin = child.stdin.take().expect("watchdog stdin");
        self.watchdog = Some((child, stdin));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains("Address already in use") {
                return Err(LaunchError::PortTaken);
            }
            if text.contains(READY_LINE) && ping(self.port) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(LaunchError::NotReady(format!(
                    "redis-server on port {} did not become ready within 10s; its log:\n{text}",
                    self.port
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the server and waits until it has exited; its directory is kept.
    pub fn stop(&mut self) {
        self.end_watchdog();
        let deadline = Instant::now() + Duration::from_secs(10);
        while ping(self.port) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl RedisServer {
    /// Tells the watchdog to stop the server and keep the directory; waits for both.
    fn end_watchdog(&mut self) {
        if let Some((mut child, mut stdin)) = self.watchdog.take() {
            let _ = stdin.write_all(b"keep\n");
            drop(stdin);
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Whether a Redis server answers `PING` on the port.
pub fn ping(port: u16) -> bool {
    let Ok(mut stream) =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200))
    else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut reply = [0u8; 7];
    stream.read_exact(&mut reply).is_ok() && &reply == b"+PONG\r\n"
}

/// One redis-server for the whole test binary; each caller gets its own database so
/// tests running in parallel never see each other's keys.
pub fn shared_redis_url() -> String {
    static SERVER: OnceLock<RedisServer> = OnceLock::new();
    static NEXT_DB: AtomicU32 = AtomicU32::new(0);
    let server = SERVER.get_or_init(RedisServer::start);
    let db = NEXT_DB.fetch_add(1, Ordering::SeqCst);
    assert!(db < 256, "more Redis tests than databases; raise --databases");
    server.url(db)
}

/// One TLS redis-server (client certificates required) for the whole test binary,
/// databases handed out like [`shared_redis_url`].
pub fn shared_tls_redis() -> (&'static redis_modes::TlsRedis, u32) {
    static SERVER: OnceLock<redis_modes::TlsRedis> = OnceLock::new();
    static NEXT_DB: AtomicU32 = AtomicU32::new(0);
    let server = SERVER.get_or_init(|| redis_modes::TlsRedis::start(true));
    let db = NEXT_DB.fetch_add(1, Ordering::SeqCst);
    assert!(db < 256, "more Redis TLS tests than databases; raise --databases");
    (server, db)
}

/// One Redis Cluster for the whole test binary, and a key prefix no other caller
/// gets (a cluster has only database 0).
pub fn shared_redis_cluster() -> (&'static redis_modes::RedisCluster, String) {
    static CLUSTER: OnceLock<redis_modes::RedisCluster> = OnceLock::new();
    static NEXT_PREFIX: AtomicU32 = AtomicU32::new(0);
    let cluster = CLUSTER.get_or_init(redis_modes::RedisCluster::start);
    (cluster, format!("test{}", NEXT_PREFIX.fetch_add(1, Ordering::SeqCst)))
}

// --- every store backend ----------------------------------------------------------

use portcullis_control_plane::store::redis::RedisTimeouts;
use portcullis_control_plane::store::{EmbeddedStore, MemoryStore, RedisStore, Store};

/// A store to run a test on, with what keeps it alive.
#[derive(Clone)]
pub struct Backend {
    pub store: Arc<dyn Store>,
    dir: Option<Arc<tempfile::TempDir>>,
    /// Opens another connection to the same data (Redis backends).
    reopen: Option<Arc<dyn Fn() -> Arc<dyn Store> + Send + Sync>>,
}

impl Backend {
    /// The store as another replica sees it: its own Redis connection to the same data;
    /// the same store for the backends a single process owns.
    pub fn replica(&self) -> Arc<dyn Store> {
        match &self.reopen {
            Some(open) => open(),
            None => Arc::clone(&self.store),
        }
    }

    /// The store as a restarted control plane finds it: the embedded database opened
    /// again from its file, a new connection to the same Redis data, the same memory
    /// store (it is the process' own). Every other handle on the store must be gone
    /// (the embedded database refuses a second opener).
    pub fn restart(self) -> Backend {
        let Backend { store, dir, reopen } = self;
        let store: Arc<dyn Store> = match (&reopen, &dir) {
            (Some(open), _) => {
                drop(store);
                open()
            }
            (None, Some(dir)) => {
                drop(store);
                Arc::new(
                    EmbeddedStore::open(dir.path()).expect("reopen the embedded store: is a handle left?"),
                )
            }
            (None, None) => store,
        };
        Backend { store, dir, reopen }
    }
}

/// What a test of [`backends!`] takes: the whole [`Backend`] (its own, so it can
/// [`Backend::restart`] it), or just its store (the backend is then kept alive beside
/// the test).
pub trait FromBackend: Sized {
    /// The test's argument, and what must outlive the test.
    fn take(backend: Backend) -> (Self, Option<Backend>);
}

impl FromBackend for Backend {
    fn take(backend: Backend) -> (Self, Option<Backend>) {
        (backend, None)
    }
}

impl FromBackend for Arc<dyn Store> {
    fn take(backend: Backend) -> (Self, Option<Backend>) {
        (Arc::clone(&backend.store), Some(backend))
    }
}

pub fn memory() -> Backend {
    Backend { store: Arc::new(MemoryStore::new()), dir: None, reopen: None }
}

pub fn embedded() -> Backend {
    let dir = tempfile::tempdir().unwrap();
    Backend {
        store: Arc::new(EmbeddedStore::open(dir.path()).unwrap()),
        dir: Some(Arc::new(dir)),
        reopen: None,
    }
}

/// A Redis backend: `open` makes a store with its own connection to the same data.
fn redis_backend(open: impl Fn() -> Arc<dyn Store> + Send + Sync + 'static) -> Backend {
    Backend { store: open(), dir: None, reopen: Some(Arc::new(open)) }
}

pub fn redis() -> Backend {
    let url = shared_redis_url();
    redis_backend(move || Arc::new(RedisStore::new(&url, RedisTimeouts::default()).unwrap()))
}

/// Redis over TLS, verified against the test CA, with a client certificate.
pub fn redis_tls() -> Backend {
    let (server, db) = shared_tls_redis();
    redis_backend(move || Arc::new(RedisStore::open(server.options(db)).unwrap()))
}

/// A Redis Cluster of three primaries.
pub fn redis_cluster() -> Backend {
    let (cluster, prefix) = shared_redis_cluster();
    redis_backend(move || Arc::new(RedisStore::open(cluster.options(&prefix)).unwrap()))
}

/// One test module per function, with a test per backend: memory, embedded, Redis,
/// Redis over TLS and a Redis Cluster (run one with e.g. `-- ::redis_cluster`). A
/// test takes a [`Backend`] or an `Arc<dyn Store>` ([`FromBackend`]); the backend
/// lives until the test ends.
#[allow(unused_macros)]
macro_rules! backends {
    ($($test:ident),* $(,)?) => {$(
        mod $test {
            $crate::support::backends!(@backend $test memory);
            $crate::support::backends!(@backend $test embedded);
            $crate::support::backends!(@backend $test redis);
            $crate::support::backends!(@backend $test redis_tls);
            $crate::support::backends!(@backend $test redis_cluster);
        }
    )*};
    (@backend $test:ident $backend:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $backend() {
            let (argument, _alive) = crate::support::FromBackend::take(crate::support::$backend());
            super::$test(argument).await;
        }
    };
}
#[allow(unused_imports)]
pub(crate) use backends;

// --- the binaries -------------------------------------------------------------------

pub const SERVER: &str = env!("CARGO_BIN_EXE_portcullis-control-plane");
pub const CLI: &str = env!("CARGO_BIN_EXE_portcullis");

/// A command for one of the binaries, without any `PORTCULLIS_*` variable of the
/// environment the tests run in.
pub fn command(binary: &str) -> Command {
    let mut command = Command::new(binary);
    for (var, _) in std::env::vars() {
        if var.starts_with("PORTCULLIS_") {
            command.env_remove(var);
        }
    }
    command
}

/// The CLI against `url`, with the admin token when given.
pub fn cli(url: &str, admin_token: Option<&str>, args: &[&str]) -> Output {
    let mut command = command(CLI);
    command.args(["--url", url]);
    if let Some(token) = admin_token {
        command.env("PORTCULLIS_ADMIN_TOKEN", token);
    }
    command.args(args).output().unwrap()
}

/// A control plane process, killed on drop.
pub struct Server {
    child: Child,
    /// The admin listener.
    pub url: String,
    /// The internal listener (fleet credential [`FLEET_CREDENTIAL`]).
    pub internal_url: String,
    /// Where the log (stderr) goes.
    log: tempfile::NamedTempFile,
}

impl Server {
    pub fn start(admin_token: &str, args: &[&str]) -> Self {
        Self::spawn(admin_token, args)
    }

    /// Like [`Server::start`]; for tests that read [`Server::log`] (every server keeps
    /// its log).
    pub fn start_logged(admin_token: &str, args: &[&str]) -> Self {
        Self::spawn(admin_token, args)
    }

    /// Starts the server on two free ports. A port can be taken by another process
    /// between the probe and the server's bind: the server then stops with `cannot
    /// listen on`, and is started again on other ports.
    fn spawn(admin_token: &str, args: &[&str]) -> Self {
        for _ in 0..5 {
            let log = tempfile::NamedTempFile::new().unwrap();
            let ports = free_ports(2);
            let (admin, internal) = (ports[0], ports[1]);
            let child = command(SERVER)
                .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
                .args(["--internal-listen", &format!("127.0.0.1:{internal}")])
                .args(args)
                .env("PORTCULLIS_ADMIN_TOKEN", admin_token)
                .env("PORTCULLIS_FLEET_CREDENTIAL", FLEET_CREDENTIAL)
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(Stdio::from(log.reopen().unwrap()))
                .spawn()
                .unwrap();
            let mut server = Self {
                child,
                url: format!("http://127.0.0.1:{admin}"),
                internal_url: format!("http://127.0.0.1:{internal}"),
                log,
            };
            match server.wait_until_healthy() {
                Ok(()) => return server,
                Err(log) if log.contains("cannot listen on") => continue,
                Err(log) => panic!("server exited early; its log:\n{log}"),
            }
        }
        panic!("no two free ports the server could bind in five attempts");
    }

    /// What the server logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap()
    }

    /// `Err(log)` when the server exited before it was healthy.
    fn wait_until_healthy(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Err(format!("{status}\n{}", self.log()));
            }
            if cli(&self.url, None, &["health"]).status.success() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("server did not become healthy; its log:\n{}", self.log());
    }

    /// Sends SIGTERM and returns whether the process exited successfully.
    pub fn terminate(mut self) -> bool {
        let status = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.success();
            }
            assert!(Instant::now() < deadline, "server ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// --- the two listeners, in process ---------------------------------------------------

use axum::body::Body;
use axum::http::header::AUTHORIZATION;
use axum::http::Request;
use axum::response::Response;
use axum::Router;
use portcullis_control_plane::admin_credential::FleetCredentials;
use portcullis_control_plane::{admin_app, internal_app, AppState};
use portcullis_core::fleet::{FeedKey, FleetCredential};
use tower::ServiceExt as _;

/// An admin API request with `admin_token` as bearer, and `body` as JSON when given.
pub fn admin_request(
    admin_token: &str,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> axum::http::Request<axum::body::Body> {
    use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
    let builder = axum::http::Request::builder()
        .method(method)
        .uri(path)
        .header(AUTHORIZATION, format!("Bearer {admin_token}"));
    match body {
        Some(b) => {
            builder.header(CONTENT_TYPE, "application/json").body(axum::body::Body::from(b.to_string()))
        }
        None => builder.body(axum::body::Body::empty()),
    }
    .unwrap()
}

/// A response's body as JSON; panics with the body when it is not.
pub async fn body_json(response: Response) -> serde_json::Value {
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 22).await.unwrap();
    serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&bytes)))
}

/// The fleet credential the in-process tests' Envoys would present.
pub const FLEET_CREDENTIAL: &str = "support-fleet-credential-0123456789abcdef";

pub fn fleet_credential() -> FleetCredential {
    FleetCredential::new(FLEET_CREDENTIAL).unwrap()
}

/// The accepted fleet credentials: [`FLEET_CREDENTIAL`] only.
pub fn fleet_credentials() -> Arc<FleetCredentials> {
    Arc::new(FleetCredentials::new(&fleet_credential(), None).unwrap())
}

/// The feed key callers presenting [`FLEET_CREDENTIAL`] get hashes under.
pub fn feed_key() -> FeedKey {
    fleet_credential().feed_key()
}

/// Both listeners of one state, called without a socket.
#[derive(Clone)]
pub struct Listeners {
    pub admin: Router,
    pub internal: Router,
}

impl Listeners {
    pub fn new(state: AppState) -> Self {
        Self { admin: admin_app(state.clone()), internal: internal_app(state) }
    }

    /// Sends a request where a deployment would: the admin API and metrics to the admin
    /// listener; everything else to the internal one, with the fleet credential unless
    /// the request carries an `Authorization` header already.
    pub async fn send(&self, mut request: Request<Body>) -> Response {
        let path = request.uri().path();
        if path.starts_with("/admin/") || path == "/metrics" {
            return self.admin.clone().oneshot(request).await.unwrap();
        }
        if !request.headers().contains_key(AUTHORIZATION) {
            let value = format!("Bearer {FLEET_CREDENTIAL}").parse().unwrap();
            request.headers_mut().insert(AUTHORIZATION, value);
        }
        self.internal.clone().oneshot(request).await.unwrap()
    }
}

/// The value of the metric line starting with `line_prefix` in OpenMetrics `text`
/// (0 when absent).
pub fn metric_value(text: &str, line_prefix: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(line_prefix).map(|v| v.trim().parse::<f64>().unwrap() as u64))
        .unwrap_or(0)
}

// --- the service's dependencies ---------------------------------------------------------

use portcullis_control_plane::admin_credential::AdminCredential;
use portcullis_control_plane::clock::SystemClock;
use portcullis_control_plane::keys::KeyPolicy;
use portcullis_control_plane::master_key::MasterKey;
use portcullis_control_plane::metrics::Metrics;
use portcullis_control_plane::random::OsRandom;
use portcullis_control_plane::signing::SigningAlgorithm;
use portcullis_control_plane::tokens::TokenPolicy;
use portcullis_control_plane::Dependencies;

/// The service's dependencies as the in-process tests use them: the system clock, the
/// OS random source, fresh metrics, [`fleet_credentials`], ES256 signing keys with a
/// day of overlap and no scheduled rotation, and [`token_policy`]. A test changes what
/// it depends on with struct update syntax.
pub fn dependencies(store: Arc<dyn Store>, admin_token: &str, master_key: [u8; 32]) -> Dependencies {
    Dependencies {
        store,
        admin: Arc::new(AdminCredential::new(admin_token).unwrap()),
        fleet: fleet_credentials(),
        token_policy: token_policy(),
        clock: Arc::new(SystemClock),
        rng: Arc::new(OsRandom),
        metrics: Arc::new(Metrics::new()),
        master_key: Arc::new(MasterKey::from_bytes(master_key)),
        key_policy: KeyPolicy {
            algorithm: SigningAlgorithm::Es256,
            overlap_ms: 86_400_000,
            rotate_every_ms: None,
        },
        feed_keep: 100_000,
    }
}

/// Tokens issued by `portcullis` for `demo-api`: 15 minutes, refreshable for a day.
pub fn token_policy() -> TokenPolicy {
    TokenPolicy {
        issuer: "portcullis".into(),
        default_audience: "demo-api".into(),
        default_ttl_seconds: 900,
        refresh_ttl_seconds: 86_400,
    }
}

// --- a webhook receiver -----------------------------------------------------------------

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};

/// One request a [`Receiver`] got, and how it answered.
#[derive(Clone, Debug)]
pub struct Received {
    pub headers: HeaderMap,
    pub body: Bytes,
    pub status: StatusCode,
}

/// An HTTP server on 127.0.0.1 that records what is posted to `/hook` and answers
/// `status`, or 503 while down or while failures are scripted.
#[derive(Clone)]
pub struct Receiver {
    pub url: String,
    received: Arc<std::sync::Mutex<Vec<Received>>>,
    failures_left: Arc<AtomicU32>,
    down: Arc<std::sync::atomic::AtomicBool>,
}

pub async fn receiver(status: StatusCode) -> Receiver {
    let received: Arc<std::sync::Mutex<Vec<Received>>> = Arc::default();
    let failures_left = Arc::new(AtomicU32::new(0));
    let down = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (sink, failing, is_down) = (Arc::clone(&received), Arc::clone(&failures_left), Arc::clone(&down));
    let router = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let (sink, failing, is_down) = (Arc::clone(&sink), Arc::clone(&failing), Arc::clone(&is_down));
            async move {
                let scripted =
                    failing.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok();
                let answer = if is_down.load(Ordering::SeqCst) || scripted {
                    StatusCode::SERVICE_UNAVAILABLE
                } else {
                    status
                };
                sink.lock().unwrap().push(Received { headers, body, status: answer });
                answer
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    Receiver { url, received, failures_left, down }
}

impl Receiver {
    /// Every request, refused ones included.
    pub fn requests(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// The requests answered with a 2xx.
    pub fn accepted(&self) -> Vec<Received> {
        self.requests().into_iter().filter(|r| r.status.is_success()).collect()
    }

    /// The next `n` requests get a 503.
    pub fn fail_next(&self, n: u32) {
        self.failures_left.store(n, Ordering::SeqCst);
    }

    /// While down, every request gets a 503.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }
}
