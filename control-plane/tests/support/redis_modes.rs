//! Redis the way production runs it: over TLS ([`TlsRedis`]) and as a Redis Cluster
//! of three primaries ([`RedisCluster`], plain or TLS), each started from the real
//! `redis-server` (and `redis-cli --cluster create`) on loopback, in their own temp
//! dirs.

use std::ffi::OsString;
use std::process::Command;
use std::time::{Duration, Instant};

use portcullis_control_plane::store::redis::{KeySpace, RedisOptions, RedisTls};
use portcullis_control_plane::tls::{CaBundle, ClientIdentity};

use super::pki::TestPki;
use super::{binary, output_within, RedisServer};

/// A redis-server serving TLS on `--tls-port` with a certificate of its own CA (and a
/// plain port the harness pings on).
pub struct TlsRedis {
    pub pki: TestPki,
    pub server: RedisServer,
}

/// redis-server arguments for TLS with the certificates of `pki`.
fn tls_args(pki: &TestPki, require_client_certificates: bool) -> Vec<OsString> {
    vec![
        "--tls-cert-file".into(),
        pki.server_cert_file().into(),
        "--tls-key-file".into(),
        pki.server_key_file().into(),
        "--tls-ca-cert-file".into(),
        pki.ca_file().into(),
        "--tls-auth-clients".into(),
        if require_client_certificates { "yes" } else { "no" }.into(),
    ]
}

/// What the server flags `--redis-ca-file`, `--redis-cert-file` and
/// `--redis-key-file` would configure.
fn client_tls(pki: &TestPki) -> RedisTls {
    RedisTls {
        ca: Some(CaBundle::load("--redis-ca-file", &pki.ca_file()).unwrap()),
        identity: Some(
            ClientIdentity::load(
                "--redis-cert-file",
                &pki.client_cert_file(),
                "--redis-key-file",
                &pki.client_key_file(),
            )
            .unwrap(),
        ),
    }
}

impl TlsRedis {
    /// `require_client_certificates`: `--tls-auth-clients yes` (Redis' default) or `no`.
    pub fn start(require_client_certificates: bool) -> Self {
        // The certificates live in the server's directory, so they are removed with
        // it even when the server is held by a `static`.
        let dir = tempfile::tempdir().unwrap();
        let pki = TestPki::generate_in(dir.path().join("pki"));
        let args = tls_args(&pki, require_client_certificates);
        let server = RedisServer::start_in(dir, &["--tls-port"], &args);
        Self { pki, server }
    }

    pub fn tls_port(&self) -> u16 {
        self.server.port_of("--tls-port")
    }

    pub fn url(&self, db: u32) -> String {
        format!("rediss://127.0.0.1:{}/{db}", self.tls_port())
    }

    /// Store options for database `db`, trusting the CA and presenting the client
    /// certificate.
    pub fn options(&self, db: u32) -> RedisOptions {
        RedisOptions { tls: client_tls(&self.pki), ..RedisOptions::server(&self.url(db)) }
    }
}

/// Three redis-servers with `--cluster-enabled yes`, joined into one cluster of three
/// primaries (no replicas) that cover all 16384 slots; optionally all over TLS
/// (clients and the cluster bus, client certificates required).
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
    pki: Option<TestPki>,
}

impl RedisCluster {
    pub fn start() -> Self {
        Self::start_with(None)
    }

    /// A cluster that only speaks TLS between its nodes and serves clients on
    /// `--tls-port` (the plain port stays for the harness).
    pub fn start_tls() -> Self {
        Self::start_with(Some(TestPki::generate()))
    }

    fn start_with(pki: Option<TestPki>) -> Self {
        let mut args: Vec<OsString> = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
            .into_iter()
            .map(OsString::from)
            .collect();
        let mut port_flags = vec!["--cluster-port"];
        let mut cli = Command::new(binary("redis-cli", "REDIS_CLI_BIN"));
        if let Some(pki) = &pki {
            args.extend(tls_args(pki, true));
            args.extend(["--tls-cluster".into(), "yes".into()]);
            port_flags.push("--tls-port");
            cli.arg("--tls").arg("--cacert").arg(pki.ca_file());
            cli.arg("--cert").arg(pki.client_cert_file()).arg("--key").arg(pki.client_key_file());
        }
        let nodes: Vec<RedisServer> = (0..3).map(|_| RedisServer::start_with(&port_flags, &args)).collect();
        let client_port = |n: &RedisServer| if pki.is_some() { n.port_of("--tls-port") } else { n.port() };
        let addresses: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", client_port(n))).collect();
        // `create` waits for the nodes to agree, without a limit of its own.
        let (output, _) = output_within(
            cli.args(["--cluster", "create"]).args(&addresses).args([
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ]),
            Duration::from_secs(60),
        );
        assert!(
            output.status.success(),
            "redis-cli --cluster create failed (or took over 60s): {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let cluster = Self { nodes, pki };
        cluster.wait_until_healthy();
        cluster
    }

    /// Seed URLs of every node (`rediss://` on a TLS cluster).
    pub fn urls(&self) -> Vec<String> {
        match &self.pki {
            None => self.nodes.iter().map(|n| format!("redis://127.0.0.1:{}", n.port())).collect(),
            Some(_) => {
                self.nodes.iter().map(|n| format!("rediss://127.0.0.1:{}", n.port_of("--tls-port"))).collect()
            }
        }
    }

    /// The PKI of a TLS cluster.
    pub fn pki(&self) -> &TestPki {
        self.pki.as_ref().expect("a TLS cluster")
    }

    pub fn node(&mut self, i: usize) -> &mut RedisServer {
        &mut self.nodes[i]
    }

    /// `CLUSTER INFO` of every node says `cluster_state:ok` and knows all three
    /// nodes (the other nodes' view converges by gossip after `create` returns).
    pub fn wait_until_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let healthy = self.nodes.iter().all(|node| {
                let info = self.query::<String>(node.port(), redis::cmd("CLUSTER").arg("INFO"));
                info.is_some_and(|info| {
                    info.contains("cluster_state:ok") && info.contains("cluster_known_nodes:3")
                })
            });
            if healthy {
                return;
            }
            assert!(Instant::now() < deadline, "the Redis Cluster did not become healthy within 30s");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// How many keys matching `pattern` each node holds.
    pub fn keys_per_node_matching(&self, pattern: &str) -> Vec<u64> {
        self.nodes
            .iter()
            .map(|n| {
                let keys: Vec<String> = self.query(n.port(), redis::cmd("KEYS").arg(pattern)).unwrap();
                keys.len() as u64
            })
            .collect()
    }

    /// The slot of `key` as the cluster computes it (`CLUSTER KEYSLOT`).
    pub fn slot(&self, key: &str) -> u16 {
        self.query(self.nodes[0].port(), redis::cmd("CLUSTER").arg("KEYSLOT").arg(key)).unwrap()
    }

    fn query<T: redis::FromRedisValue>(&self, port: u16, cmd: &redis::Cmd) -> Option<T> {
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).ok()?;
        let mut connection = client.get_connection_with_timeout(Duration::from_secs(2)).ok()?;
        cmd.query(&mut connection).ok()
    }

    /// Store options for a key space of its own under `prefix` (a cluster has only
    /// database 0, so tests are kept apart by prefix).
    pub fn options(&self, prefix: &str) -> RedisOptions {
        RedisOptions {
            keys: KeySpace::new(prefix).unwrap(),
            tls: self.pki.as_ref().map(client_tls).unwrap_or_default(),
            ..RedisOptions::cluster(&self.urls())
        }
    }
}
