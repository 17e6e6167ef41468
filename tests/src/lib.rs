//! End-to-end harness: starts the real components as processes on free loopback ports
//! (redis-server, the control plane, Envoy loading the freshly built filter) plus an
//! in-process test server (upstream and JWKS endpoint, both counting their hits), waits
//! until each is ready, and tears everything down when dropped. A test that fails
//! prints the tail of every process log it started.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub mod frames;
pub mod manifests;
pub mod secrets;
pub mod signing;
pub mod tokens;

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn path_from_env(var: &str, default: PathBuf, hint: &str) -> PathBuf {
    let path = std::env::var_os(var).map(PathBuf::from).unwrap_or(default);
    assert!(path.exists(), "{} not found at {} ({hint})", var, path.display());
    path
}

pub fn envoy_bin() -> PathBuf {
    path_from_env("PORTCULLIS_ENVOY", repo_root().join(".venv/bin/envoy"), "run `make setup`")
}

pub fn filter_wasm() -> PathBuf {
    path_from_env(
        "PORTCULLIS_WASM",
        repo_root().join("target/wasm/wasm32-wasip1/release/portcullis_filter.wasm"),
        "run `make build-wasm`",
    )
}

pub fn bin(name: &str) -> PathBuf {
    let dir = std::env::var_os("PORTCULLIS_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/debug"));
    path_from_env(&format!("{name} binary"), dir.join(name), "run `make build-native`")
}

/// A loopback port free right now, never handed out before in this process, and below
/// the kernel's ephemeral range (32768–60999 by default). A port from that range, once
/// released, can be taken again before the process it was meant for binds it: by any
/// `bind(0)` (Envoy's own listeners) or as the source port of an outgoing connection
/// (a control plane connecting to Redis). Ports are tried from an offset that depends
/// on the process id, so two test processes rarely try the same ones.
pub fn free_port() -> u16 {
    const FIRST: u16 = 15_000;
    const COUNT: u16 = 17_000;
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

/// A child process whose output goes to a log file; killed on drop.
pub struct Proc {
    pub name: String,
    child: Option<Child>,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(name: &str, mut cmd: Command, logdir: &Path) -> Proc {
        let log = logdir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Proc { name: name.to_string(), child: Some(child), log }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether the process has exited.
    pub fn exited(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(Some(_))) | None)
    }

    /// Sends SIGTERM and waits up to 10 s (then SIGKILL). Returns whether it exited on TERM.
    pub fn terminate(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return true;
        };
        let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            let text = self.log_text();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(60)..];
            eprintln!("----- last {} lines of {} ({}) -----", tail.len(), self.name, self.log.display());
            for l in tail {
                eprintln!("{l}");
            }
            eprintln!("----- end of {} -----", self.name);
        }
    }
}

/// Polls `check` until it returns true or the timeout passes.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("http client")
}

async fn wait_http_ok(url: &str, name: &str, proc: &mut Proc) {
    if !wait_http_ok_or_exit(url, name, proc).await {
        panic!("{name} exited before becoming ready; log:\n{}", proc.log_text());
    }
}

/// How long a process may take to become ready before a test gives up on it. Only a
/// failing start waits this long: a healthy one is ready in well under a second, but
/// Envoy compiling the filter on a starved machine (CI beside other builds) has taken
/// over 30 s.
pub const STARTUP_BOUND: Duration = Duration::from_secs(180);

/// Waits for a 2xx at `url`; false when the process exited first.
async fn wait_http_ok_or_exit(url: &str, name: &str, proc: &mut Proc) -> bool {
    let client = http();
    let deadline = Instant::now() + STARTUP_BOUND;
    loop {
        if let Ok(r) = client.get(url).send().await {
            if r.status().is_success() {
                return true;
            }
        }
        if proc.exited() {
            return false;
        }
        assert!(Instant::now() < deadline, "{name} not ready at {url} after {STARTUP_BOUND:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Attempts at starting a process on a port picked by [`free_port`]: another test may
/// take the port between the pick and the bind.
const PORT_ATTEMPTS: usize = 3;

/// A scratch directory for one test's logs and data.
pub struct Workdir(pub tempfile::TempDir);

impl Workdir {
    pub fn new() -> Workdir {
        Workdir(tempfile::Builder::new().prefix("portcullis-e2e-").tempdir().expect("tempdir"))
    }
    pub fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Default for Workdir {
    fn default() -> Self {
        Self::new()
    }
}

// ---------------------------------------------------------------------------------
// redis-server

pub struct Redis {
    pub proc: Proc,
    pub port: u16,
    logdir: PathBuf,
}

impl Redis {
    pub async fn start(logdir: &Path) -> Redis {
        for _ in 1..PORT_ATTEMPTS {
            if let Some(r) = Redis::try_start_on(logdir, free_port()).await {
                return r;
            }
        }
        Redis::start_on(logdir, free_port()).await
    }

    pub async fn start_on(logdir: &Path, port: u16) -> Redis {
        match Redis::try_start_on(logdir, port).await {
            Some(r) => r,
            None => panic!("redis-server on port {port} exited at start (see its log above)"),
        }
    }

    async fn try_start_on(logdir: &Path, port: u16) -> Option<Redis> {
        let server = which("redis-server").expect("redis-server not on PATH (run `make setup`)");
        let mut cmd = Command::new(server);
        cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]);
        let mut proc = Proc::spawn(&format!("redis-{port}"), cmd, logdir);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if redis_ping(port).await {
                break;
            }
            if proc.exited() {
                eprintln!("redis-server on port {port} exited at start: {}", proc.log_text());
                return None;
            }
            assert!(Instant::now() < deadline, "redis-server did not answer PING");
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        Some(Redis { proc, port, logdir: logdir.to_path_buf() })
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn stop(&mut self) {
        self.proc.kill();
    }

    pub async fn restart(&mut self) {
        self.proc.kill();
        *self = Redis::start_on(&self.logdir.clone(), self.port).await;
    }
}

/// Revocation state written straight into a control plane's Redis, in bulk: the layout
/// of docs/control-plane.md ("Redis key layout"), as `revoke jti` and `revoke user` leave
/// it (set `revoked-jtis`, records `user-min-version/<sub>`, index set
/// `user-min-versions`), without the feed entries. For tests that need a large state
/// fast; a follower sees it through a snapshot.
pub struct RevocationSeed {
    /// (jti, exp in Unix seconds).
    pub revoked: Vec<(String, u64)>,
    /// (sub, minimum version).
    pub users: Vec<(String, u64)>,
}

/// Index members never expire (the control plane's `NEVER_MS`, the year 9999).
const NEVER_MS: u64 = 253_402_300_799_000;

impl Redis {
    /// Writes `seed` with pipelined commands (ZADD in batches, one HSET per user).
    pub async fn seed_revocations(&self, seed: &RevocationSeed) {
        let mut commands: Vec<Vec<String>> = Vec::new();
        for batch in seed.revoked.chunks(1000) {
            let mut zadd = vec!["ZADD".to_string(), "portcullis:{set:revoked-jtis}".to_string()];
            for (jti, exp) in batch {
                zadd.push((exp * 1000).to_string());
                zadd.push(jti.clone());
            }
            commands.push(zadd);
        }
        for batch in seed.users.chunks(1000) {
            let mut zadd = vec!["ZADD".to_string(), "portcullis:{set:user-min-versions}".to_string()];
            for (sub, version) in batch {
                zadd.push(NEVER_MS.to_string());
                zadd.push(format!("{sub}\u{1f}{version}"));
            }
            commands.push(zadd);
        }
        for (sub, version) in &seed.users {
            commands.push(vec![
                "HSET".to_string(),
                format!("portcullis:{{record:user-min-version/{sub}}}"),
                "v".to_string(),
                version.to_string(),
            ]);
        }
        self.pipeline(&commands).await;
    }

    /// Sends `commands` pipelined and waits for every reply; panics on an error reply.
    pub async fn pipeline(&self, commands: &[Vec<String>]) {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        let stream =
            tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await.expect("connect to redis");
        let (read, mut write) = stream.into_split();
        let mut bytes = Vec::new();
        for command in commands {
            bytes.extend_from_slice(format!("*{}\r\n", command.len()).as_bytes());
            for arg in command {
                bytes.extend_from_slice(format!("${}\r\n{arg}\r\n", arg.len()).as_bytes());
            }
        }
        // Write and read at once: a large pipeline would otherwise fill both buffers.
        let writer = tokio::spawn(async move { write.write_all(&bytes).await.expect("write to redis") });
        let mut lines = BufReader::new(read).lines();
        for _ in 0..commands.len() {
            let line = lines.next_line().await.expect("read from redis").expect("a reply");
            assert!(line.starts_with(':'), "redis answered {line}");
        }
        writer.await.expect("writer");
    }
}

async fn redis_ping(port: u16) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    if s.write_all(b"PING\r\n").await.is_err() {
        return false;
    }
    let mut buf = [0u8; 16];
    matches!(tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await, Ok(Ok(n)) if buf[..n].starts_with(b"+PONG"))
}

pub fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|p| p.join(name)).find(|p| p.is_file()))
}

// ---------------------------------------------------------------------------------
// control plane

#[derive(Debug, Clone)]
pub enum StoreKind {
    Memory,
    Embedded,
    Redis(String),
}

/// The store a test's control plane runs on.
#[derive(Clone, Copy, Debug)]
pub enum Backend {
    Embedded,
    Redis,
}

impl Backend {
    /// The store to start a control plane with, and the Redis behind it (keep it alive
    /// as long as the control plane).
    pub async fn store(self, logdir: &Path) -> (Option<Redis>, StoreKind) {
        match self {
            Backend::Embedded => (None, StoreKind::Embedded),
            Backend::Redis => {
                let r = Redis::start(logdir).await;
                let url = r.url();
                (Some(r), StoreKind::Redis(url))
            }
        }
    }
}

/// The store of a [`CpStack`]'s control plane.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StackStore {
    Memory,
    Embedded,
    Redis,
}

/// An upstream, a control plane on `store` and one Envoy loading `plugin` beside them.
/// Fields drop in order: the work directory (with the logs a failing test prints) last.
pub struct CpStack {
    pub envoy: Envoy,
    pub cp: ControlPlane,
    pub server: TestServer,
    pub redis: Option<Redis>,
    pub dir: Workdir,
}

impl CpStack {
    pub async fn start(store: StackStore, plugin: &Value) -> CpStack {
        let dir = Workdir::new();
        let (redis, kind) = match store {
            StackStore::Memory => (None, StoreKind::Memory),
            StackStore::Embedded => Backend::Embedded.store(dir.path()).await,
            StackStore::Redis => Backend::Redis.store(dir.path()).await,
        };
        let cp = ControlPlane::start(dir.path(), kind).await;
        let server = TestServer::start(json!({"keys": []})).await;
        let clusters = EnvoyClusters::beside(server.port, &cp);
        let envoy = Envoy::start(dir.path(), plugin, &clusters).await;
        CpStack { envoy, cp, server, redis, dir }
    }
}

/// For each named `async fn(Backend)`: a test on the embedded store and one on Redis.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() { super::$name($crate::Backend::Embedded).await }
            )*
        }
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() { super::$name($crate::Backend::Redis).await }
            )*
        }
    };
}

/// A control plane process: its admin listener on `port`, its internal listener (what
/// Envoys call, with [`FLEET_CREDENTIAL`]) on `internal_port`.
pub struct ControlPlane {
    pub proc: Proc,
    pub port: u16,
    pub internal_port: u16,
    pub admin_token: String,
    pub data_dir: PathBuf,
    store: StoreKind,
    logdir: PathBuf,
    env: Vec<(String, String)>,
}

pub const ADMIN_TOKEN: &str = "e2e-admin-token-0123456789abcdef";
/// The fleet credential of the tests' control planes and Envoys.
pub const FLEET_CREDENTIAL: &str = "e2e-fleet-credential-0123456789abcdef";
/// The environment variable Envoy passes the fleet credential to the filter's VM in.
pub const FLEET_CREDENTIAL_ENV: &str = "PORTCULLIS_FLEET_CREDENTIAL";

/// The `controlPlane` section of a plugin configuration: the control plane cluster,
/// the credential read from the VM's environment.
pub fn control_plane_section(timeout_ms: u64) -> Value {
    json!({
        "cluster": "portcullis_control_plane", "authority": "control-plane", "timeoutMs": timeout_ms,
        "credential": { "env": FLEET_CREDENTIAL_ENV }
    })
}
/// Test-only master key (32 bytes, base64) sealing the control plane's signing keys.
pub const MASTER_KEY: &str = "ZTJlLXRlc3Qtb25seS1tYXN0ZXIta2V5LTMyYnl0ZXM=";

impl ControlPlane {
    pub async fn start(logdir: &Path, store: StoreKind) -> ControlPlane {
        ControlPlane::start_env(logdir, store, &[]).await
    }

    /// Like [`ControlPlane::start`], with extra environment variables (server settings).
    pub async fn start_env(logdir: &Path, store: StoreKind, env: &[(&str, &str)]) -> ControlPlane {
        let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let data_dir = logdir.join("cp-data");
        for _ in 1..PORT_ATTEMPTS {
            let ports = (free_port(), free_port());
            if let Some(cp) =
                ControlPlane::try_start_with(logdir, store.clone(), ports, data_dir.clone(), &env).await
            {
                return cp;
            }
        }
        ControlPlane::start_with(logdir, store, (free_port(), free_port()), data_dir, &env).await
    }

    async fn start_with(
        logdir: &Path,
        store: StoreKind,
        ports: (u16, u16),
        data_dir: PathBuf,
        env: &[(String, String)],
    ) -> ControlPlane {
        match ControlPlane::try_start_with(logdir, store, ports, data_dir, env).await {
            Some(cp) => cp,
            None => panic!("the control plane on ports {ports:?} exited at start (see its log above)"),
        }
    }

    /// `ports`: admin, internal. `env` may override the fleet credentials.
    async fn try_start_with(
        logdir: &Path,
        store: StoreKind,
        (port, internal_port): (u16, u16),
        data_dir: PathBuf,
        env: &[(String, String)],
    ) -> Option<ControlPlane> {
        let mut cmd = Command::new(bin("portcullis-control-plane"));
        cmd.env("PORTCULLIS_ADMIN_LISTEN", format!("127.0.0.1:{port}"))
            .env("PORTCULLIS_INTERNAL_LISTEN", format!("127.0.0.1:{internal_port}"))
            .env("PORTCULLIS_FLEET_CREDENTIAL", FLEET_CREDENTIAL)
            .env("PORTCULLIS_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("PORTCULLIS_DATA_DIR", &data_dir)
            .env("PORTCULLIS_MASTER_KEY", MASTER_KEY)
            .env("RUST_LOG", "info")
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        match &store {
            StoreKind::Memory => cmd.env("PORTCULLIS_STORE", "memory"),
            StoreKind::Embedded => cmd.env("PORTCULLIS_STORE", "embedded"),
            StoreKind::Redis(url) => cmd.env("PORTCULLIS_STORE", "redis").env("PORTCULLIS_REDIS_URL", url),
        };
        let mut proc = Proc::spawn(&format!("control-plane-{port}"), cmd, logdir);
        if !wait_http_ok_or_exit(&format!("http://127.0.0.1:{port}/healthz"), "control plane", &mut proc)
            .await
        {
            eprintln!("control plane on port {port} exited at start: {}", proc.log_text());
            return None;
        }
        Some(ControlPlane {
            proc,
            port,
            internal_port,
            admin_token: ADMIN_TOKEN.to_string(),
            data_dir,
            store,
            logdir: logdir.to_path_buf(),
            env: env.to_vec(),
        })
    }

    /// The admin listener.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The internal listener (what Envoys call).
    pub fn internal_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.internal_port)
    }

    /// Stops and starts the process on the same ports with the same store and data.
    pub async fn restart(&mut self) {
        let env = self.env.clone();
        self.restart_with_env(&env).await;
    }

    /// Like [`ControlPlane::restart`], with other extra environment variables (e.g. new
    /// fleet credentials).
    pub async fn restart_with_env(&mut self, env: &[(String, String)]) {
        self.proc.terminate();
        let (logdir, store, ports, data) =
            (self.logdir.clone(), self.store.clone(), (self.port, self.internal_port), self.data_dir.clone());
        *self = ControlPlane::start_with(&logdir, store, ports, data, env).await;
    }

    /// Runs the `portcullis` CLI against this control plane; returns stdout, panics with
    /// stderr on failure.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new(bin("portcullis"))
            .arg("--url")
            .arg(self.url())
            .arg("--internal-url")
            .arg(self.internal_url())
            .args(args)
            .env("PORTCULLIS_ADMIN_TOKEN", &self.admin_token)
            .output()
            .expect("run the portcullis CLI");
        assert!(out.status.success(), "portcullis {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A sample of the control plane's `/metrics`, by name with labels
    /// (`portcullis_lockout_checks_total{result="open"}`); 0 when absent.
    pub async fn metric(&self, series: &str) -> u64 {
        let text = http().get(format!("{}/metrics", self.url())).send().await.expect("metrics");
        let text = text.text().await.unwrap_or_default();
        text.lines()
            .filter_map(|l| l.rsplit_once(' '))
            .find(|(n, _)| *n == series)
            .and_then(|(_, v)| v.trim().parse::<f64>().ok())
            .map(|v| v as u64)
            .unwrap_or(0)
    }

    /// Mints an access token through the admin API.
    pub async fn issue_token(&self, sub: &str, scopes: &[&str]) -> String {
        let r = http()
            .post(format!("{}/admin/v1/tokens", self.url()))
            .bearer_auth(&self.admin_token)
            .json(&json!({ "sub": sub, "scopes": scopes }))
            .send()
            .await
            .expect("token request");
        assert_eq!(r.status(), 200, "token issue failed: {:?}", r.text().await);
        let body: Value = r.json().await.expect("token json");
        body["accessToken"].as_str().expect("accessToken").to_string()
    }
}

// ---------------------------------------------------------------------------------
// in-process test server: upstream + JWKS endpoint

/// What the test server saw and what it serves.
#[derive(Clone, Default)]
pub struct TestServerState {
    pub upstream_hits: Arc<AtomicUsize>,
    pub jwks_fetches: Arc<AtomicUsize>,
    pub jwks: Arc<Mutex<Value>>,
    /// Status code for JWKS answers (200 unless a test breaks it).
    pub jwks_status: Arc<Mutex<u16>>,
    /// How long a JWKS answer takes (ms), to hold requests waiting for keys.
    pub jwks_delay_ms: Arc<AtomicU64>,
    /// Requests the upstream routed to its protected handler (`/api/...` as a lenient
    /// framework reads the path, see [`lenient_route`]).
    pub protected_hits: Arc<AtomicUsize>,
    pub last_headers: Arc<Mutex<Vec<(String, String)>>>,
    pub last_path: Arc<Mutex<String>>,
    /// What `/v1/feed` answers (status, body), and how often it was asked.
    pub feed: Arc<Mutex<(u16, String)>>,
    pub feed_polls: Arc<AtomicUsize>,
    /// Every feed poll: its `authorization` header ("" when absent) and cursor.
    pub feed_requests: Arc<Mutex<Vec<(String, String)>>>,
    /// A snapshot part (index) the feed answers 503 for, to hold a snapshot back.
    pub feed_held_part: Arc<Mutex<Option<usize>>>,
    /// The `authorization` header of every JWKS fetch ("" when absent).
    pub jwks_authorizations: Arc<Mutex<Vec<String>>>,
    /// `POST /login` attempts that reached the upstream.
    pub login_hits: Arc<AtomicUsize>,
    /// How long `POST /login` takes to answer (ms; 0 by default), so that attempts sent
    /// together are in flight together.
    pub login_delay_ms: Arc<AtomicU64>,
    /// `POST /webhook` deliveries.
    pub webhooks: Arc<Mutex<Vec<Delivery>>>,
}

/// One webhook delivery: its headers and body.
pub type Delivery = (Vec<(String, String)>, String);

pub struct TestServer {
    pub port: u16,
    pub state: TestServerState,
    task: tokio::task::JoinHandle<()>,
}

impl TestServer {
    pub async fn start(jwks: Value) -> TestServer {
        use axum::extract::State;
        use axum::http::{HeaderMap, Method, StatusCode, Uri};
        use axum::response::IntoResponse;

        let state = TestServerState { jwks: Arc::new(Mutex::new(jwks)), ..Default::default() };
        *state.jwks_status.lock().unwrap() = 200;
        *state.feed.lock().unwrap() = (404, String::new());

        fn authorization(headers: &HeaderMap) -> String {
            headers
                .get("authorization")
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .unwrap_or_default()
        }
        async fn serve_jwks(State(s): State<TestServerState>, headers: HeaderMap) -> impl IntoResponse {
            s.jwks_fetches.fetch_add(1, Ordering::SeqCst);
            s.jwks_authorizations.lock().unwrap().push(authorization(&headers));
            let delay = s.jwks_delay_ms.load(Ordering::SeqCst);
            if delay > 0 {
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
            let status = *s.jwks_status.lock().unwrap();
            let body = s.jwks.lock().unwrap().to_string();
            (
                StatusCode::from_u16(status).unwrap_or(StatusCode::OK),
                [("content-type", "application/json")],
                body,
            )
        }
        // Plays the control plane's feed with one snapshot: what `set_feed` holds, a page
        // or an array of pages (the parts, in order). A poll from a part's cursor gets the
        // next part, from the last part's cursor an empty delta, from anywhere else the
        // first part: a follower assembles the snapshot, catches up and is then current.
        async fn serve_feed(
            State(s): State<TestServerState>,
            uri: Uri,
            headers: HeaderMap,
        ) -> impl IntoResponse {
            s.feed_polls.fetch_add(1, Ordering::SeqCst);
            let asked = uri
                .query()
                .unwrap_or("")
                .split('&')
                .find_map(|pair| pair.strip_prefix("cursor="))
                .unwrap_or("")
                .to_string();
            s.feed_requests.lock().unwrap().push((authorization(&headers), asked.clone()));
            let (status, body) = s.feed.lock().unwrap().clone();
            let parts = match serde_json::from_str::<Value>(&body) {
                Ok(Value::Array(parts)) => parts,
                Ok(page) if page["snapshot"].is_object() => vec![page],
                _ => Vec::new(),
            };
            let position = parts.iter().position(|p| p["cursor"] == Value::String(asked.clone()));
            let answer = match (status, position) {
                (200, Some(i)) if i + 1 == parts.len() => {
                    Some(json!({ "cursor": asked, "keyId": parts[i]["keyId"], "more": false }))
                }
                (200, Some(i)) => Some((i + 1, parts[i + 1].clone()))
                    .and_then(|(n, p)| (*s.feed_held_part.lock().unwrap() != Some(n)).then_some(p)),
                (200, None) if !parts.is_empty() => Some(parts[0].clone()),
                _ => None,
            };
            let (status, body) = match answer {
                Some(page) => (200, page.to_string()),
                None if position.is_some() => (503, String::new()),
                None => (status, body),
            };
            (
                StatusCode::from_u16(status).unwrap_or(StatusCode::OK),
                [("content-type", "application/json")],
                body,
            )
        }
        // Everything else: routed on the path as a lenient framework reads it, so that a
        // request the filter lets through under a public-looking path reaches the
        // protected handler (or the login endpoint) the way it would on such a framework.
        async fn upstream(
            State(s): State<TestServerState>,
            method: Method,
            uri: Uri,
            headers: HeaderMap,
            body: String,
        ) -> (StatusCode, &'static str) {
            s.upstream_hits.fetch_add(1, Ordering::SeqCst);
            *s.last_headers.lock().unwrap() = headers
                .iter()
                .map(|(n, v)| (n.to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
                .collect();
            *s.last_path.lock().unwrap() = uri.to_string();
            let route = lenient_route(uri.path());
            if method == Method::POST && route == "/login" {
                return login(State(s), body).await;
            }
            if route.starts_with("/api/") {
                s.protected_hits.fetch_add(1, Ordering::SeqCst);
                return (StatusCode::OK, "protected");
            }
            (StatusCode::OK, "upstream ok")
        }

        // A login endpoint: `{"username": .., "password": "correct"}` logs in (200),
        // any other password is refused (401).
        async fn login(State(s): State<TestServerState>, body: String) -> (StatusCode, &'static str) {
            s.login_hits.fetch_add(1, Ordering::SeqCst);
            let delay = s.login_delay_ms.load(Ordering::SeqCst);
            if delay > 0 {
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
            let doc: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
            if doc.get("password").and_then(Value::as_str) == Some("correct") {
                (StatusCode::OK, "welcome")
            } else {
                (StatusCode::UNAUTHORIZED, "bad credentials")
            }
        }
        async fn webhook(State(s): State<TestServerState>, headers: HeaderMap, body: String) -> StatusCode {
            let headers = headers
                .iter()
                .map(|(n, v)| (n.to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
                .collect();
            s.webhooks.lock().unwrap().push((headers, body));
            StatusCode::NO_CONTENT
        }

        let app = axum::Router::new()
            .route("/.well-known/jwks.json", axum::routing::get(serve_jwks))
            .route("/login", axum::routing::post(login))
            .route("/webhook", axum::routing::post(webhook))
            .route("/v1/feed", axum::routing::get(serve_feed))
            .fallback(upstream)
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        TestServer { port, state, task }
    }

    pub fn hits(&self) -> usize {
        self.state.upstream_hits.load(Ordering::SeqCst)
    }
    /// Requests served by the protected handler (`/api/...` after [`lenient_route`]).
    pub fn protected_hits(&self) -> usize {
        self.state.protected_hits.load(Ordering::SeqCst)
    }
    /// Makes every JWKS answer take this long.
    pub fn set_jwks_delay(&self, delay: Duration) {
        self.state
            .jwks_delay_ms
            .store(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX), Ordering::SeqCst);
    }
    pub fn jwks_fetches(&self) -> usize {
        self.state.jwks_fetches.load(Ordering::SeqCst)
    }
    /// Sets what the revocation feed answers.
    pub fn set_feed(&self, status: u16, body: impl Into<String>) {
        *self.state.feed.lock().unwrap() = (status, body.into());
    }
    pub fn login_hits(&self) -> usize {
        self.state.login_hits.load(Ordering::SeqCst)
    }
    /// Makes `POST /login` answer after `delay`.
    pub fn set_login_delay(&self, delay: Duration) {
        self.state
            .login_delay_ms
            .store(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX), Ordering::SeqCst);
    }
    pub fn webhooks(&self) -> Vec<Delivery> {
        self.state.webhooks.lock().unwrap().clone()
    }
    pub fn feed_polls(&self) -> usize {
        self.state.feed_polls.load(Ordering::SeqCst)
    }
    /// Every feed poll so far: (`authorization` header, cursor).
    pub fn feed_requests(&self) -> Vec<(String, String)> {
        self.state.feed_requests.lock().unwrap().clone()
    }
    /// Makes the feed answer 503 for snapshot part `part` (or for none).
    pub fn hold_feed_part(&self, part: Option<usize>) {
        *self.state.feed_held_part.lock().unwrap() = part;
    }
    /// The `authorization` header of every JWKS fetch so far ("" when absent).
    pub fn jwks_authorizations(&self) -> Vec<String> {
        self.state.jwks_authorizations.lock().unwrap().clone()
    }
    pub fn set_jwks(&self, jwks: Value) {
        *self.state.jwks.lock().unwrap() = jwks;
    }
    pub fn last_header(&self, name: &str) -> Option<String> {
        self.state.last_headers.lock().unwrap().iter().find(|(n, _)| n == name).map(|(_, v)| v.clone())
    }
    pub fn last_header_count(&self, name: &str) -> usize {
        self.state.last_headers.lock().unwrap().iter().filter(|(n, _)| n == name).count()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// How a lenient upstream framework reads a path before routing: every escape decoded,
/// `\` read as `/`, NULs dropped, `;parameters` dropped from each segment, dot segments
/// resolved and empty segments merged.
pub fn lenient_route(path: &str) -> String {
    let decoded =
        percent_encoding::percent_decode_str(path).decode_utf8_lossy().replace('\\', "/").replace('\0', "");
    let mut segments: Vec<&str> = Vec::new();
    for segment in decoded.split('/') {
        match segment.split(';').next().unwrap_or_default() {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            name => segments.push(name),
        }
    }
    format!("/{}", segments.join("/"))
}

// ---------------------------------------------------------------------------------
// a TCP proxy that delays what it forwards

/// A loopback TCP proxy in front of a server that holds every chunk it forwards to the
/// server for a settable delay (0 at start): calls through it stay in flight as long as
/// a test needs, so what happens *while* the filter waits for an answer is observable.
pub struct DelayProxy {
    pub port: u16,
    delay_ms: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl DelayProxy {
    pub async fn start(target_port: u16) -> DelayProxy {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let delay_ms = Arc::new(AtomicU64::new(0));
        let delay = delay_ms.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let delay = delay.clone();
                tokio::spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", target_port)).await else {
                        return;
                    };
                    let (mut client_rx, mut client_tx) = client.into_split();
                    let (mut server_rx, mut server_tx) = server.into_split();
                    let upstream = async move {
                        let mut buf = vec![0u8; 16 * 1024];
                        loop {
                            let n = match client_rx.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            let ms = delay.load(Ordering::SeqCst);
                            if ms > 0 {
                                tokio::time::sleep(Duration::from_millis(ms)).await;
                            }
                            if server_tx.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                        let _ = server_tx.shutdown().await;
                    };
                    let downstream = async move {
                        let _ = tokio::io::copy(&mut server_rx, &mut client_tx).await;
                        let _ = client_tx.shutdown().await;
                    };
                    tokio::join!(upstream, downstream);
                });
            }
        });
        DelayProxy { port, delay_ms, task }
    }

    pub fn set_delay(&self, delay: Duration) {
        self.delay_ms.store(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX), Ordering::SeqCst);
    }
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ---------------------------------------------------------------------------------
// Envoy

pub struct Envoy {
    pub proc: Proc,
    pub port: u16,
    pub admin_port: u16,
}

/// How the connection manager in front of the filter reads requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hcm {
    /// What every shipped configuration sets and the filter relies on
    /// (docs/plugin-config.md, "Security model"): the client address is the TCP peer
    /// (`use_remote_address`, with `xff_num_trusted_hops` equal to the plugin's
    /// `clientIp.trustedHops`), paths are normalised and escaped slashes refused, and
    /// header names with underscores refused.
    Hardened,
    /// Envoy's defaults, so that the filter's own defences are what is tested.
    Permissive,
}

impl Hcm {
    /// The connection manager fields this mode sets.
    fn fields(self, plugin_config: &Value) -> Value {
        // Trailers of HTTP/1.1 chunked requests reach the filters (as HTTP/2 ones always
        // do), so tests see what a client can send either way.
        let mut fields = json!({ "http_protocol_options": { "enable_trailers": true } });
        if let (Hcm::Hardened, Some(all), Value::Object(hardened)) =
            (self, fields.as_object_mut(), hardened_connection_manager(plugin_config))
        {
            all.extend(hardened);
        }
        fields
    }
}

/// The connection manager fields the filter relies on, for a plugin configuration
/// (`xff_num_trusted_hops` follows its `clientIp.trustedHops`). Every shipped
/// configuration sets them (tested).
pub fn hardened_connection_manager(plugin_config: &Value) -> Value {
    let hops = plugin_config.pointer("/clientIp/trustedHops").and_then(Value::as_u64).unwrap_or(0);
    json!({
        "use_remote_address": true,
        "xff_num_trusted_hops": hops,
        "normalize_path": true,
        "merge_slashes": true,
        "path_with_escaped_slashes_action": "REJECT_REQUEST",
        "common_http_protocol_options": { "headers_with_underscores_action": "REJECT_REQUEST" }
    })
}

/// The fields of `expected` that `actual` lacks or sets otherwise, by name.
pub fn missing_fields(actual: &Value, expected: &Value) -> Vec<String> {
    let Some(expected) = expected.as_object() else { return Vec::new() };
    expected
        .iter()
        .filter(|(name, value)| actual.get(name.as_str()) != Some(*value))
        .map(|(name, value)| format!("{name}: {value}"))
        .collect()
}

/// The `stats_config` of `envoy/demo.yaml`: the stat tags that turn the names inside the
/// filter's counters into labels (docs/observability.md). Every Envoy the tests start
/// uses it, so what they scrape is what a deployment scrapes.
pub fn stats_config() -> Value {
    let path = repo_root().join("envoy/demo.yaml");
    let text = std::fs::read_to_string(&path).expect("read envoy/demo.yaml");
    let demo: Value = serde_yaml::from_str(&text).expect("envoy/demo.yaml is YAML");
    demo.get("stats_config").cloned().expect("envoy/demo.yaml has a stats_config")
}

/// Where the filter's clusters point.
pub struct EnvoyClusters {
    pub upstream_port: u16,
    /// `jwks` cluster (test server) port.
    pub jwks_port: Option<u16>,
    /// `portcullis_control_plane` cluster port: the control plane's internal listener.
    pub control_plane_port: Option<u16>,
}

impl EnvoyClusters {
    /// The upstream on `upstream_port` and `control_plane`'s internal listener; no
    /// separate JWKS server.
    pub fn beside(upstream_port: u16, control_plane: &ControlPlane) -> Self {
        EnvoyClusters {
            upstream_port,
            jwks_port: None,
            control_plane_port: Some(control_plane.internal_port),
        }
    }
}

impl Envoy {
    /// The bootstrap the end-to-end tests use: one listener (HTTP/1.1 and HTTP/2 with
    /// prior knowledge), the filter with `plugin_config`, then the router to the upstream.
    pub fn bootstrap(
        plugin_config: &Value,
        clusters: &EnvoyClusters,
        hcm: Hcm,
        port: u16,
        admin_port: u16,
    ) -> Value {
        let cluster = |name: &str, port: u16| {
            json!({
                "name": name, "type": "STATIC", "connect_timeout": "1s",
                "load_assignment": { "cluster_name": name, "endpoints": [ { "lb_endpoints": [
                    { "endpoint": { "address": { "socket_address": { "address": "127.0.0.1", "port_value": port } } } } ] } ] }
            })
        };
        let mut clusters_json = vec![cluster("upstream", clusters.upstream_port)];
        if let Some(p) = clusters.jwks_port {
            clusters_json.push(cluster("jwks", p));
        }
        if let Some(p) = clusters.control_plane_port {
            clusters_json.push(cluster("portcullis_control_plane", p));
        }
        let mut bootstrap = json!({
            "admin": { "address": { "socket_address": { "address": "127.0.0.1", "port_value": admin_port } } },
            "stats_config": stats_config(),
            "static_resources": {
                "listeners": [{
                    "name": "ingress",
                    "address": { "socket_address": { "address": "127.0.0.1", "port_value": port } },
                    "filter_chains": [{ "filters": [{
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                            "stat_prefix": "ingress",
                            "route_config": { "name": "r", "virtual_hosts": [{ "name": "all", "domains": ["*"],
                                "routes": [{ "match": { "prefix": "/" }, "route": { "cluster": "upstream" } }] }] },
                            "http_filters": [
                                {
                                    "name": "envoy.filters.http.wasm",
                                    "typed_config": {
                                        "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                                        "config": {
                                            "name": "portcullis",
                                            "root_id": "portcullis",
                                            "vm_config": {
                                                "vm_id": "portcullis",
                                                "runtime": "envoy.wasm.runtime.v8",
                                                "code": { "local": { "filename": filter_wasm().to_string_lossy() } },
                                                // The fleet credential comes from Envoy's own
                                                // environment, never from the configuration.
                                                "environment_variables": { "host_env_keys": [FLEET_CREDENTIAL_ENV] }
                                            },
                                            "failure_policy": "FAIL_CLOSED",
                                            // Login routes read the account from the body
                                            // before the headers go upstream.
                                            "allow_on_headers_stop_iteration": true,
                                            "configuration": {
                                                "@type": "type.googleapis.com/google.protobuf.StringValue",
                                                "value": plugin_config.to_string()
                                            }
                                        }
                                    }
                                },
                                { "name": "envoy.filters.http.router", "typed_config": {
                                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" } }
                            ]
                        }
                    }] }]
                }],
                "clusters": clusters_json
            }
        });
        let manager = bootstrap
            .pointer_mut("/static_resources/listeners/0/filter_chains/0/filters/0/typed_config")
            .and_then(Value::as_object_mut)
            .expect("connection manager");
        if let Value::Object(fields) = hcm.fields(plugin_config) {
            manager.extend(fields);
        }
        bootstrap
    }

    /// Starts Envoy (2 workers, so shared data across VMs is exercised) with the hardened
    /// connection manager and [`FLEET_CREDENTIAL`] in its environment, and waits until the
    /// admin endpoint reports ready.
    pub async fn start(logdir: &Path, plugin_config: &Value, clusters: &EnvoyClusters) -> Envoy {
        Envoy::launch(logdir, plugin_config, clusters, Hcm::Hardened, Some(FLEET_CREDENTIAL)).await
    }

    /// Like [`Envoy::start`], with the given connection manager settings.
    pub async fn start_with(
        logdir: &Path,
        plugin_config: &Value,
        clusters: &EnvoyClusters,
        hcm: Hcm,
    ) -> Envoy {
        Envoy::launch(logdir, plugin_config, clusters, hcm, Some(FLEET_CREDENTIAL)).await
    }

    /// Like [`Envoy::start`], with another fleet credential in Envoy's environment (or
    /// none).
    pub async fn start_with_credential(
        logdir: &Path,
        plugin_config: &Value,
        clusters: &EnvoyClusters,
        credential: Option<&str>,
    ) -> Envoy {
        Envoy::launch(logdir, plugin_config, clusters, Hcm::Hardened, credential).await
    }

    async fn launch(
        logdir: &Path,
        plugin_config: &Value,
        clusters: &EnvoyClusters,
        hcm: Hcm,
        credential: Option<&str>,
    ) -> Envoy {
        // Port 0: Envoy binds free ports itself (no race with other tests picking ports);
        // the admin address comes from --admin-address-path, the listener's from /listeners.
        let config = Envoy::bootstrap(plugin_config, clusters, hcm, 0, 0);
        let env: Vec<(&str, &str)> = credential.map(|c| (FLEET_CREDENTIAL_ENV, c)).into_iter().collect();
        Envoy::start_bootstrap(logdir, &config, &env).await
    }

    /// Starts Envoy with a bootstrap of the caller's (listener and admin on port 0) and
    /// exactly `env` added to an environment without the fleet credential; waits until
    /// it is ready.
    pub async fn start_bootstrap(logdir: &Path, config: &Value, env: &[(&str, &str)]) -> Envoy {
        static STARTED: AtomicUsize = AtomicUsize::new(0);
        let n = STARTED.fetch_add(1, Ordering::SeqCst);
        let name = format!("envoy-{}-{n}", std::process::id());
        let path = logdir.join(format!("{name}.json"));
        std::fs::write(&path, serde_json::to_vec_pretty(config).expect("json")).expect("write bootstrap");
        let admin_file = logdir.join(format!("{name}.admin"));
        let mut cmd = Command::new(envoy_bin());
        cmd.arg("-c")
            .arg(&path)
            .arg("--admin-address-path")
            .arg(&admin_file)
            .args(["--use-dynamic-base-id", "--concurrency", "2", "--log-level", "info"])
            .args(["--component-log-level", "wasm:debug"])
            .env_remove(FLEET_CREDENTIAL_ENV)
            .envs(env.iter().copied());
        let mut proc = Proc::spawn(&name, cmd, logdir);

        let deadline = Instant::now() + STARTUP_BOUND;
        let admin_port = loop {
            let text = std::fs::read_to_string(&admin_file).unwrap_or_default();
            if let Some(port) = text.trim().rsplit(':').next().and_then(|p| p.parse::<u16>().ok()) {
                break port;
            }
            assert!(!proc.exited(), "envoy exited before becoming ready; log:\n{}", proc.log_text());
            assert!(Instant::now() < deadline, "envoy wrote no admin address in {STARTUP_BOUND:?}");
            tokio::time::sleep(Duration::from_millis(30)).await;
        };
        wait_http_ok(&format!("http://127.0.0.1:{admin_port}/ready"), "envoy", &mut proc).await;
        let listeners: Value = http()
            .get(format!("http://127.0.0.1:{admin_port}/listeners?format=json"))
            .send()
            .await
            .expect("listeners")
            .json()
            .await
            .expect("listeners json");
        let port = listeners
            .pointer("/listener_statuses/0/local_address/socket_address/port_value")
            .and_then(Value::as_u64)
            .and_then(|p| u16::try_from(p).ok())
            .unwrap_or_else(|| panic!("no listener port in {listeners}"));
        Envoy { proc, port, admin_port }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    /// The admin endpoint's Prometheus exposition (`/stats/prometheus`).
    pub async fn prometheus(&self) -> String {
        http()
            .get(format!("http://127.0.0.1:{}/stats/prometheus", self.admin_port))
            .send()
            .await
            .expect("stats/prometheus")
            .text()
            .await
            .expect("stats/prometheus body")
    }

    /// Waits until the filter has loaded `provider`'s remote JWKS (its `fetch_ok`
    /// counter moved), not merely until the JWKS server saw a request: a request that
    /// arrives while the first fetch is still in flight waits for that fetch, and that
    /// wait is its one refetch, so a test that rotates keys right after must start from
    /// loaded keys.
    pub async fn wait_for_keys(&self, provider: &str) {
        let name = format!("wasmcustom.portcullis.jwks.{provider}.fetch_ok");
        eventually(STARTUP_BOUND, "the first JWKS loaded by the filter", || async {
            self.counter(&name).await >= 1
        })
        .await;
    }

    /// A counter from the admin endpoint (0 when not defined yet).
    pub async fn counter(&self, name: &str) -> u64 {
        let text = http()
            .get(format!("http://127.0.0.1:{}/stats?filter=^{}$", self.admin_port, regex_escape(name)))
            .send()
            .await
            .expect("stats")
            .text()
            .await
            .unwrap_or_default();
        text.lines()
            .filter_map(|l| l.split_once(": "))
            .find(|(n, _)| *n == name)
            .and_then(|(_, v)| v.trim().parse().ok())
            .unwrap_or(0)
    }
}

fn regex_escape(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '_' { c.to_string() } else { format!("\\{c}") })
        .collect()
}

// ---------------------------------------------------------------------------------
// the common stack: Envoy with the filter, the test server as upstream, JWKS and feed

/// Envoy with the filter in front of a [`TestServer`] that also serves the JWKS (and the
/// revocation feed) through the `jwks` cluster.
// Fields drop in order: the work directory (with the logs a failing test prints) last.
pub struct FilterStack {
    pub envoy: Envoy,
    pub server: TestServer,
    _dir: Workdir,
}

impl FilterStack {
    pub async fn start(plugin_config: &Value, jwks: Value) -> FilterStack {
        FilterStack::start_with(plugin_config, jwks, |_| {}).await
    }

    /// Like [`FilterStack::start`], letting the caller set up the test server first.
    pub async fn start_with(
        plugin_config: &Value,
        jwks: Value,
        prepare: impl FnOnce(&TestServer),
    ) -> FilterStack {
        let dir = Workdir::new();
        let server = TestServer::start(jwks).await;
        prepare(&server);
        let clusters = EnvoyClusters {
            upstream_port: server.port,
            jwks_port: Some(server.port),
            control_plane_port: None,
        };
        let envoy = Envoy::start(dir.path(), plugin_config, &clusters).await;
        FilterStack { envoy, server, _dir: dir }
    }
}

/// Envoy with the filter in front of a [`TestServer`] (also serving the `jwks` cluster),
/// and the real control plane (embedded store) reached through a [`DelayProxy`], so that
/// a test can keep the filter's calls to it in flight.
// Fields drop in order: the work directory (with the logs a failing test prints) last.
pub struct GuardStack {
    pub envoy: Envoy,
    pub proxy: DelayProxy,
    pub cp: ControlPlane,
    pub server: TestServer,
    _dir: Workdir,
}

impl GuardStack {
    pub async fn start(plugin_config: &Value, hcm: Hcm) -> GuardStack {
        let dir = Workdir::new();
        let cp = ControlPlane::start(dir.path(), StoreKind::Embedded).await;
        let proxy = DelayProxy::start(cp.internal_port).await;
        let server = TestServer::start(json!({ "keys": [] })).await;
        let clusters = EnvoyClusters {
            upstream_port: server.port,
            jwks_port: Some(server.port),
            control_plane_port: Some(proxy.port),
        };
        let envoy = Envoy::start_with(dir.path(), plugin_config, &clusters, hcm).await;
        GuardStack { envoy, proxy, cp, server, _dir: dir }
    }
}

/// The `WWW-Authenticate` header of a response ("" when absent).
pub fn www_authenticate(r: &reqwest::Response) -> String {
    r.headers().get("www-authenticate").and_then(|v| v.to_str().ok()).unwrap_or("").to_string()
}

/// The `error_description` of a response's `WWW-Authenticate` header: the filter's reason
/// for refusing a token ("" when there is none).
pub fn error_description(r: &reqwest::Response) -> String {
    let www = www_authenticate(r);
    www.split("error_description=\"").nth(1).and_then(|s| s.split('"').next()).unwrap_or("").to_string()
}
