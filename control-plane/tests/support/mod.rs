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
    place: Place,
}

/// Where a backend's state lives.
enum Place {
    Memory,
    Embedded(tempfile::TempDir),
    Redis(String),
}

pub fn memory() -> Backend {
    Backend { store: Arc::new(MemoryStore::new()), place: Place::Memory }
}

pub fn embedded() -> Backend {
    let dir = tempfile::tempdir().unwrap();
    Backend { store: Arc::new(EmbeddedStore::open(dir.path()).unwrap()), place: Place::Embedded(dir) }
}

pub fn redis() -> Backend {
    let url = shared_redis_url();
    Backend {
        store: Arc::new(RedisStore::new(&url, RedisTimeouts::default()).unwrap()),
        place: Place::Redis(url),
    }
}

impl Backend {
    /// The store as a restarted control plane finds it: the embedded database opened
    /// again from its file, a new connection to the same Redis database, the same
    /// memory store (it is the process' own). Every other handle on the store must be
    /// gone (the embedded database refuses a second opener).
    pub fn restart(self) -> Backend {
        let Backend { store, place } = self;
        let store: Arc<dyn Store> = match &place {
            Place::Memory => store,
            Place::Embedded(dir) => {
                drop(store);
                Arc::new(
                    EmbeddedStore::open(dir.path()).expect("reopen the embedded store: is a handle left?"),
                )
            }
            Place::Redis(url) => {
                drop(store);
                Arc::new(RedisStore::new(url, RedisTimeouts::default()).unwrap())
            }
        };
        Backend { store, place }
    }
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
    pub url: String,
}

impl Server {
    pub fn start(admin_token: &str, args: &[&str]) -> Self {
        let port = free_port();
        let child = command(SERVER)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(args)
            .env("PORTCULLIS_ADMIN_TOKEN", admin_token)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut server = Self { child, url: format!("http://127.0.0.1:{port}") };
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

/// The value of the metric line starting with `line_prefix` in OpenMetrics `text`
/// (0 when absent).
pub fn metric_value(text: &str, line_prefix: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(line_prefix).map(|v| v.trim().parse::<f64>().unwrap() as u64))
        .unwrap_or(0)
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
