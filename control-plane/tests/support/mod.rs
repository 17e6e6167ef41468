//! Test helpers shared by the integration tests: a real `redis-server` on a free port
//! and small utilities.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free local port")
}

fn redis_server_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("REDIS_SERVER_BIN") {
        return PathBuf::from(path);
    }
    let candidates: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join("redis-server")).collect())
        .unwrap_or_default();
    candidates
        .into_iter()
        .chain([PathBuf::from("/usr/bin/redis-server")])
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "redis-server not found: the Redis tests need a real Redis. Install it \
                 (Debian: apt-get install redis-server) or set REDIS_SERVER_BIN"
            )
        })
}

/// A `redis-server` child process on 127.0.0.1, stopped on drop.
///
/// The server runs under a tiny `sh` watchdog that kills it when our end of its stdin
/// closes, which happens however this process ends (drop, panic, abort, SIGKILL), so
/// no server outlives the test binary even when it is held in a `static`.
pub struct RedisServer {
    port: u16,
    dir: tempfile::TempDir,
    watchdog: Option<(Child, ChildStdin)>,
}

impl RedisServer {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir for redis-server");
        let mut server = Self { port: free_port(), dir, watchdog: None };
        server.start_again();
        server
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self, db: u32) -> String {
        format!("redis://127.0.0.1:{}/{db}", self.port)
    }

    /// Starts the server (again) on the same port.
    pub fn start_again(&mut self) {
        assert!(self.watchdog.is_none(), "redis-server already running");
        let binary = redis_server_binary();
        let log = self.dir.path().join("redis.log");
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(r#""$0" "$@" & server=$!; read _; kill "$server"; wait "$server""#)
            .arg(&binary)
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(["--databases", "256"])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(&log)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        let stdin = child.stdin.take().expect("watchdog stdin");
        self.watchdog = Some((child, stdin));
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if ping(self.port) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let log = std::fs::read_to_string(&log).unwrap_or_default();
        panic!("redis-server on port {} did not answer PING within 10s; its log:\n{log}", self.port);
    }

    /// Stops the server and waits until it has exited.
    pub fn stop(&mut self) {
        if let Some((mut child, stdin)) = self.watchdog.take() {
            drop(stdin);
            let _ = child.wait();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while ping(self.port) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
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

// --- every store backend ----------------------------------------------------------

use portcullis_control_plane::store::redis::RedisTimeouts;
use portcullis_control_plane::store::{EmbeddedStore, MemoryStore, RedisStore, Store};

/// A store to run a test on, with what keeps it alive.
pub struct Backend {
    pub store: Arc<dyn Store>,
    _dir: Option<tempfile::TempDir>,
}

pub fn memory() -> Backend {
    Backend { store: Arc::new(MemoryStore::new()), _dir: None }
}

pub fn embedded() -> Backend {
    let dir = tempfile::tempdir().unwrap();
    Backend { store: Arc::new(EmbeddedStore::open(dir.path()).unwrap()), _dir: Some(dir) }
}

pub fn redis() -> Backend {
    let url = shared_redis_url();
    Backend { store: Arc::new(RedisStore::new(&url, RedisTimeouts::default()).unwrap()), _dir: None }
}

/// One test module per function, with a test per backend (memory, embedded, Redis).
#[allow(unused_macros)]
macro_rules! backends {
    ($($test:ident),* $(,)?) => {$(
        mod $test {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn memory() {
                super::$test(crate::support::memory()).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn embedded() {
                super::$test(crate::support::embedded()).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn redis() {
                super::$test(crate::support::redis()).await;
            }
        }
    )*};
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
}

impl Server {
    pub fn start(admin_token: &str, args: &[&str]) -> Self {
        let (admin, internal) = (free_port(), free_port());
        let child = command(SERVER)
            .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
            .args(["--internal-listen", &format!("127.0.0.1:{internal}")])
            .args(args)
            .env("PORTCULLIS_ADMIN_TOKEN", admin_token)
            .env("PORTCULLIS_FLEET_CREDENTIAL", FLEET_CREDENTIAL)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut server = Self {
            child,
            url: format!("http://127.0.0.1:{admin}"),
            internal_url: format!("http://127.0.0.1:{internal}"),
        };
        server.wait_until_healthy();
        server
    }

    fn wait_until_healthy(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("server exited early: {status}");
            }
            if cli(&self.url, None, &["health"]).status.success() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("server did not become healthy");
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
