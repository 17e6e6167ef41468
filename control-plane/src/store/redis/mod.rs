//! [`RedisStore`]: state shared by every replica, in a real Redis: one server (or a
//! primary with replicas behind one address) or a Redis Cluster.
//!
//! The connection is created on first use, so the process can start, and report
//! not-ready, while Redis is still down. One server: a [`ConnectionManager`] (a
//! multiplexed connection that reconnects by itself). A cluster: redis-rs' async
//! cluster connection, which learns the slot map from any seed node, sends each
//! command to the primary owning its key's slot, follows `MOVED`/`ASK` and reconnects.
//! Both are driven through one [`Connection`], so every operation is written once.
//!
//! Cluster rules every operation here keeps (`keys.rs`, `scripts.rs`):
//! - each Lua script and each multi-key command only touches keys of one hash tag,
//!   hence one slot; scripts only touch keys passed in `KEYS`;
//! - no numbered databases (a cluster only has database 0): deployments sharing a
//!   Redis are told apart by the key prefix ([`KeySpace`]);
//! - `PING` (readiness) goes to every primary, so a cluster missing one is not ready.
//!
//! TLS (`rediss://`) is rustls, verifying the server's certificate and name against
//! the built-in roots or, when given, only the configured CA ([`RedisTls`]).
//! Certificate and handshake failures are permanent errors ([`StoreError::Backend`]),
//! so startup stops at once with the reason instead of retrying.

pub mod keys;
pub mod scripts;

use std::time::Duration;

use async_trait::async_trait;
use portcullis_core::ratelimit::Unit;
use portcullis_core::wire::{RateLimitOp, RateLimitResult};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::{ErrorKind, IntoConnectionInfo as _, RedisError, RedisFuture, Value};
use tokio::sync::OnceCell;

pub use keys::KeySpace;

use super::{
    feed_page, is_live, is_live_opt, rate_limit, require_batch_size, require_positive_lease,
    require_positive_ttl, FeedEntry, FeedPage, LogAppendError, LogEntry, QueueEntry, QueueLane, QueueOutcome,
    QueueRevive, SetMember, Store, StoreBackend, StoreError, MAX_PAGE_SIZE, MAX_SCAN_SIZE, MAX_TRIM_SIZE,
};
use crate::tls::{rustls_error, CaBundle, ClientIdentity};

/// How long after their logical expiry Redis keeps keys before dropping them. Expiry
/// is decided from the caller's clock; the grace absorbs clock skew between replicas
/// and the Redis host so GC never removes something still live.
const GC_GRACE_MS: u64 = 60_000;

/// Timeouts for the connection to Redis.
#[derive(Debug, Clone, Copy)]
pub struct RedisTimeouts {
    pub connect: Duration,
    pub response: Duration,
}

impl Default for RedisTimeouts {
    fn default() -> Self {
        Self { connect: Duration::from_secs(1), response: Duration::from_secs(2) }
    }
}

/// Where Redis is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisTarget {
    /// One server: `redis://[user:password@]host:port[/db]` or `rediss://…` for TLS.
    Server(String),
    /// A Redis Cluster, found through any of these seed nodes (same URL forms, no
    /// database); the client discovers the other nodes itself.
    Cluster(Vec<String>),
}

/// TLS settings for `rediss://` URLs; the defaults verify against the built-in roots.
#[derive(Debug, Clone, Default)]
pub struct RedisTls {
    /// Trust only these CAs for Redis' certificate (instead of the built-in roots).
    pub ca: Option<CaBundle>,
    /// Present this certificate (servers with `tls-auth-clients yes`).
    pub identity: Option<ClientIdentity>,
}

impl RedisTls {
    fn is_configured(&self) -> bool {
        self.ca.is_some() || self.identity.is_some()
    }

    fn certificates(&self) -> redis::TlsCertificates {
        redis::TlsCertificates {
            client_tls: self.identity.as_ref().map(|identity| redis::ClientTlsConfig {
                client_cert: identity.certificate_chain_pem.clone(),
                client_key: identity.private_key_pem.to_vec(),
            }),
            root_cert: self.ca.as_ref().map(|ca| ca.pem().to_vec()),
        }
    }
}

/// Everything a [`RedisStore`] needs.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    pub target: RedisTarget,
    pub tls: RedisTls,
    pub keys: KeySpace,
    pub timeouts: RedisTimeouts,
}

impl RedisOptions {
    /// One server at `url`, default keys, TLS and timeouts.
    pub fn server(url: &str) -> Self {
        Self {
            target: RedisTarget::Server(url.to_owned()),
            tls: RedisTls::default(),
            keys: KeySpace::default(),
            timeouts: RedisTimeouts::default(),
        }
    }

    /// A cluster reached through `nodes`, default keys, TLS and timeouts.
    pub fn cluster<S: AsRef<str>>(nodes: &[S]) -> Self {
        Self {
            target: RedisTarget::Cluster(nodes.iter().map(|n| n.as_ref().to_owned()).collect()),
            ..Self::server("")
        }
    }
}

enum Client {
    Server { client: redis::Client, config: ConnectionManagerConfig },
    Cluster(ClusterClient),
}

/// A connection to one server or to a cluster; cheap to clone (both multiplex).
#[derive(Clone)]
enum Connection {
    Server(ConnectionManager),
    Cluster(ClusterConnection),
}

impl redis::aio::ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> RedisFuture<'a, Value> {
        match self {
            Connection::Server(c) => c.req_packed_command(cmd),
            Connection::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Connection::Server(c) => c.req_packed_commands(cmd, offset, count),
            Connection::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Server(c) => c.get_db(),
            Connection::Cluster(c) => c.get_db(),
        }
    }
}

pub struct RedisStore {
    client: Client,
    keys: KeySpace,
    connection: OnceCell<Connection>,
}

fn invalid(message: impl Into<String>) -> StoreError {
    StoreError::InvalidArgument(message.into())
}

/// A URL as redis-rs reads it (its errors do not repeat the URL, which may hold a
/// password).
fn connection_info(url: &str) -> Result<redis::ConnectionInfo, StoreError> {
    url.into_connection_info().map_err(|e| invalid(format!("invalid Redis URL: {e}")))
}

fn is_tls(info: &redis::ConnectionInfo) -> bool {
    matches!(info.addr, redis::ConnectionAddr::TcpTls { .. })
}

impl RedisStore {
    /// One server at `url` with the default options; the connection is made on first
    /// use.
    pub fn new(url: &str, timeouts: RedisTimeouts) -> Result<Self, StoreError> {
        Self::open(RedisOptions { timeouts, ..RedisOptions::server(url) })
    }

    /// Validates the options (URLs, TLS material against the URL scheme); the
    /// connection is made on first use.
    pub fn open(options: RedisOptions) -> Result<Self, StoreError> {
        crate::tls::install_crypto_provider();
        let RedisOptions { target, tls, keys, timeouts } = options;
        let client = match target {
            RedisTarget::Server(url) => {
                let info = connection_info(&url)?;
                let client = if is_tls(&info) {
                    redis::Client::build_with_tls(info, tls.certificates())
                } else if tls.is_configured() {
                    return Err(invalid("a Redis CA or client certificate needs a rediss:// URL"));
                } else {
                    redis::Client::open(info)
                }
                .map_err(|e| invalid(format!("invalid Redis settings: {e}")))?;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(timeouts.connect)
                    .set_response_timeout(timeouts.response)
                    // Few, short retries per reconnect: callers see errors quickly
                    // (readiness turns red), and the next command starts a new
                    // reconnect anyway.
                    .set_number_of_retries(2)
                    .set_factor(50)
                    .set_max_delay(500);
                Client::Server { client, config }
            }
            RedisTarget::Cluster(nodes) => {
                if nodes.is_empty() {
                    return Err(invalid("a Redis Cluster needs at least one node URL"));
                }
                let infos = nodes.iter().map(|url| connection_info(url)).collect::<Result<Vec<_>, _>>()?;
                if infos.iter().any(|info| info.redis.db != 0) {
                    return Err(invalid(
                        "Redis Cluster has only database 0: drop the /<db> from the node URLs \
                         (separate deployments with a key prefix instead)",
                    ));
                }
                let tls_nodes = infos.iter().filter(|info| is_tls(info)).count();
                if tls_nodes != 0 && tls_nodes != infos.len() {
                    return Err(invalid("Redis Cluster node URLs must all be redis:// or all rediss://"));
                }
                if tls_nodes == 0 && tls.is_configured() {
                    return Err(invalid("a Redis CA or client certificate needs rediss:// node URLs"));
                }
                let mut builder = ClusterClientBuilder::new(infos)
                    .connection_timeout(timeouts.connect)
                    .response_timeout(timeouts.response)
                    // As for one server: fail fast, the next command tries again.
                    .retries(2)
                    .min_retry_wait(50)
                    .max_retry_wait(500);
                if tls_nodes != 0 {
                    builder = builder.certs(tls.certificates());
                }
                Client::Cluster(
                    builder.build().map_err(|e| invalid(format!("invalid Redis Cluster settings: {e}")))?,
                )
            }
        };
        Ok(Self { client, keys, connection: OnceCell::new() })
    }

    /// The key space this store writes into.
    pub fn key_space(&self) -> &KeySpace {
        &self.keys
    }

    async fn connection(&self) -> Result<Connection, StoreError> {
        let connection = self
            .connection
            .get_or_try_init(|| async {
                match &self.client {
                    Client::Server { client, config } => {
                        ConnectionManager::new_with_config(client.clone(), config.clone())
                            .await
                            .map(Connection::Server)
                    }
                    Client::Cluster(client) => client.get_async_connection().await.map(Connection::Cluster),
                }
            })
            .await
            .map_err(store_error)?;
        Ok(connection.clone())
    }

    async fn invoke<T: redis::FromRedisValue>(
        &self,
        invocation: redis::ScriptInvocation<'_>,
    ) -> Result<T, StoreError> {
        let mut conn = self.connection().await?;
        invocation.invoke_async(&mut conn).await.map_err(store_error)
    }

    async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, StoreError> {
        let mut conn = self.connection().await?;
        cmd.query_async(&mut conn).await.map_err(store_error)
    }
}

/// Maps redis-rs errors onto [`StoreError`], deciding what is transient.
fn store_error(error: RedisError) -> StoreError {
    if let Some(tls) = rustls_error(&error) {
        return StoreError::Backend(tls_failure(tls));
    }
    if error.is_timeout() {
        return StoreError::Timeout(error.to_string());
    }
    if error.is_io_error() || error.is_connection_dropped() || error.is_connection_refusal() {
        return StoreError::Unavailable(error.to_string());
    }
    // A cluster command for a node the client has no connection to (it went away and
    // has not come back yet): the node is unreachable.
    if error.kind() == ErrorKind::ClientError && error.to_string().starts_with(CLUSTER_NODE_GONE) {
        return StoreError::Unavailable(error.to_string());
    }
    match error.kind() {
        ErrorKind::BusyLoadingError
        | ErrorKind::TryAgain
        | ErrorKind::ClusterDown
        | ErrorKind::MasterDown
        | ErrorKind::ReadOnly => StoreError::Busy(error.to_string()),
        // `BUSY Redis is busy running a script`: another script is hogging the server.
        ErrorKind::ExtensionError if error.code() == Some("BUSY") => StoreError::Busy(error.to_string()),
        ErrorKind::TypeError | ErrorKind::ParseError => StoreError::CorruptData(error.to_string()),
        ErrorKind::ResponseError | ErrorKind::NoScriptError | ErrorKind::ExecAbortError => {
            StoreError::Script(error.to_string())
        }
        _ => StoreError::Backend(error.to_string()),
    }
}

/// How redis-rs' cluster client words "no connection to that node".
const CLUSTER_NODE_GONE: &str = "Requested connection not found";

/// What went wrong in a TLS handshake with Redis, and what usually fixes it.
fn tls_failure(error: &rustls::Error) -> String {
    let hint = match error {
        rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName)
        | rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForNameContext { .. }) => {
            "; the host in the URL must be a name (or IP address) in the server's certificate"
        }
        rustls::Error::InvalidCertificate(_) => {
            "; is the CA that signed Redis' certificate configured (--redis-ca-file)?"
        }
        rustls::Error::InvalidMessage(_) => "; does that port serve TLS?",
        rustls::Error::AlertReceived(_) => {
            "; the server refused the handshake (it may require a client certificate: --redis-cert-file)"
        }
        _ => "",
    };
    format!("TLS with Redis failed: {error}{hint}")
}

/// Whole-millisecond lifetimes for PEXPIRE, always at least the grace period.
fn gc_lifetime_ms(expires_at_ms: u64, now_ms: u64) -> u64 {
    expires_at_ms.saturating_sub(now_ms).saturating_add(GC_GRACE_MS)
}

fn int(value: &Value, what: &str) -> Result<u64, StoreError> {
    match value {
        Value::Int(n) => {
            u64::try_from(*n).map_err(|_| StoreError::CorruptData(format!("negative {what}: {n}")))
        }
        Value::BulkString(bytes) => std::str::from_utf8(bytes)
            .ok()
            .and_then(parse_score)
            .ok_or_else(|| StoreError::CorruptData(format!("{what} is not a number"))),
        other => Err(StoreError::CorruptData(format!("{what}: unexpected reply {other:?}"))),
    }
}

fn bytes(value: Value, what: &str) -> Result<Vec<u8>, StoreError> {
    match value {
        Value::BulkString(bytes) => Ok(bytes),
        other => Err(StoreError::CorruptData(format!("{what}: unexpected reply {other:?}"))),
    }
}

/// Sorted-set scores are doubles; ours are whole milliseconds, possibly rendered as
/// `1.7e12` by some Redis versions.
/// A flat `member, score, member, score, …` listing.
fn set_listing(flat: Vec<String>) -> Result<Vec<SetMember>, StoreError> {
    flat.chunks(2)
        .map(|pair| match pair {
            [member, score] => Ok(SetMember {
                member: member.clone(),
                expires_at_ms: parse_score(score)
                    .ok_or_else(|| StoreError::CorruptData(format!("set score {score:?} is not a number")))?,
            }),
            _ => Err(StoreError::CorruptData("odd-length set member listing".to_owned())),
        })
        .collect()
}

fn parse_score(text: &str) -> Option<u64> {
    text.parse::<u64>().ok().or_else(|| {
        let f = text.parse::<f64>().ok()?;
        (f.is_finite() && f >= 0.0 && f <= u64::MAX as f64).then_some(f as u64)
    })
}

fn parse_expiry(raw: Option<Vec<u8>>) -> Result<Option<u64>, StoreError> {
    raw.map(|raw| {
        std::str::from_utf8(&raw)
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or_else(|| StoreError::CorruptData("record expiry is not a number".to_owned()))
    })
    .transpose()
}

fn queue_lane_key(keys: &KeySpace, queue: &str, lane: QueueLane) -> String {
    match lane {
        QueueLane::Pending => keys.queue_pending(queue),
        QueueLane::Dead => keys.queue_dead(queue),
    }
}

fn text(value: Value, what: &str) -> Result<String, StoreError> {
    String::from_utf8(bytes(value, what)?)
        .map_err(|_| StoreError::CorruptData(format!("{what} is not UTF-8")))
}

/// Feed entries are stored as the 8-byte big-endian append time, then the data.
fn encode_feed_entry(appended_at_ms: u64, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + data.len());
    out.extend_from_slice(&appended_at_ms.to_be_bytes());
    out.extend_from_slice(data);
    out
}

fn decode_feed_entry(cursor: u64, raw: Vec<u8>) -> Result<FeedEntry, StoreError> {
    let (time, data) = raw
        .split_at_checked(8)
        .ok_or_else(|| StoreError::CorruptData(format!("feed entry {cursor} is truncated")))?;
    let mut at = [0u8; 8];
    at.copy_from_slice(time);
    Ok(FeedEntry { cursor, appended_at_ms: u64::from_be_bytes(at), data: data.to_vec() })
}

#[async_trait]
impl Store for RedisStore {
    fn backend(&self) -> StoreBackend {
        StoreBackend::Redis
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let reply: String = self.query(&redis::cmd("PING")).await?;
        if reply == "PONG" {
            Ok(())
        } else {
            Err(StoreError::CorruptData(format!("unexpected PING reply {reply:?}")))
        }
    }

    async fn incr_counter(&self, key: &str, delta: i64, ttl_ms: u64, now_ms: u64) -> Result<i64, StoreError> {
        require_positive_ttl(ttl_ms)?;
        let mut script = scripts::INCR_COUNTER.prepare_invoke();
        script
            .key(self.keys.counter(key))
            .arg(delta)
            .arg(now_ms)
            .arg(now_ms.saturating_add(ttl_ms))
            .arg(ttl_ms.saturating_add(GC_GRACE_MS));
        self.invoke(script).await
    }

    async fn get_counter(&self, key: &str, now_ms: u64) -> Result<i64, StoreError> {
        let (value, expires_at): (Option<i64>, Option<u64>) =
            self.query(redis::cmd("HMGET").arg(self.keys.counter(key)).arg("v").arg("x")).await?;
        Ok(match (value, expires_at) {
            (Some(value), Some(at)) if is_live(at, now_ms) => value,
            _ => 0,
        })
    }

    async fn set_add(
        &self,
        set: &str,
        member: &str,
        expires_at_ms: u64,
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        let mut script = scripts::SET_ADD.prepare_invoke();
        script.key(self.keys.set(set)).arg(member).arg(expires_at_ms).arg(now_ms).arg(GC_GRACE_MS);
        let added: i64 = self.invoke(script).await?;
        Ok(added == 1)
    }

    async fn set_remove(&self, set: &str, member: &str) -> Result<(), StoreError> {
        let _: i64 = self.query(redis::cmd("ZREM").arg(self.keys.set(set)).arg(member)).await?;
        Ok(())
    }

    async fn set_contains(&self, set: &str, member: &str, now_ms: u64) -> Result<bool, StoreError> {
        let score: Option<String> =
            self.query(redis::cmd("ZSCORE").arg(self.keys.set(set)).arg(member)).await?;
        match score {
            None => Ok(false),
            Some(score) => {
                let at = parse_score(&score)
                    .ok_or_else(|| StoreError::CorruptData(format!("set score {score:?} is not a number")))?;
                Ok(is_live(at, now_ms))
            }
        }
    }

    async fn set_members(&self, set: &str, now_ms: u64) -> Result<Vec<SetMember>, StoreError> {
        let mut script = scripts::SET_MEMBERS.prepare_invoke();
        script.key(self.keys.set(set)).arg(now_ms);
        let mut members = set_listing(self.invoke(script).await?)?;
        members.sort_by(|a, b| a.member.cmp(&b.member));
        Ok(members)
    }

    async fn set_scan(
        &self,
        set: &str,
        after: Option<&SetMember>,
        limit: usize,
        now_ms: u64,
    ) -> Result<Vec<SetMember>, StoreError> {
        let limit = limit.min(MAX_SCAN_SIZE);
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut script = scripts::SET_SCAN.prepare_invoke();
        script.key(self.keys.set(set)).arg(now_ms).arg(limit);
        match after {
            Some(a) => script.arg(a.expires_at_ms).arg(a.member.as_str()),
            None => script.arg("").arg(""),
        };
        set_listing(self.invoke(script).await?)
    }

    async fn record_get(&self, key: &str, now_ms: u64) -> Result<Option<Vec<u8>>, StoreError> {
        let (value, expires_at): (Option<Vec<u8>>, Option<Vec<u8>>) =
            self.query(redis::cmd("HMGET").arg(self.keys.record(key)).arg("v").arg("x")).await?;
        let expires_at = parse_expiry(expires_at)?;
        Ok(value.filter(|_| is_live_opt(expires_at, now_ms)))
    }

    async fn record_put(
        &self,
        key: &str,
        value: Vec<u8>,
        expires_at_ms: Option<u64>,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let key = self.keys.record(key);
        match expires_at_ms {
            Some(at) if !is_live(at, now_ms) => self.record_delete_key(&key).await,
            Some(at) => {
                let mut script = scripts::RECORD_PUT_EXPIRING.prepare_invoke();
                script.key(&key).arg(value).arg(at).arg(gc_lifetime_ms(at, now_ms));
                let _: i64 = self.invoke(script).await?;
                Ok(())
            }
            None => {
                let mut conn = self.connection().await?;
                redis::pipe()
                    .atomic()
                    .del(&key)
                    .ignore()
                    .hset(&key, "v", value)
                    .ignore()
                    .query_async::<()>(&mut conn)
                    .await
                    .map_err(store_error)
            }
        }
    }

    async fn record_delete(&self, key: &str) -> Result<(), StoreError> {
        self.record_delete_key(&self.keys.record(key)).await
    }

    async fn record_compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        new: Option<Vec<u8>>,
        expires_at_ms: Option<u64>,
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        // An already-expired replacement is a delete, as in the other backends.
        let new = new.filter(|_| is_live_opt(expires_at_ms, now_ms));
        let mut script = scripts::RECORD_COMPARE_AND_SWAP.prepare_invoke();
        script
            .key(self.keys.record(key))
            .arg(now_ms)
            .arg(if expected.is_some() { "1" } else { "0" })
            .arg(expected.unwrap_or_default())
            .arg(if new.is_some() { "1" } else { "0" })
            .arg(new.unwrap_or_default())
            .arg(expires_at_ms.map_or(String::new(), |at| at.to_string()))
            .arg(expires_at_ms.map_or(0, |at| gc_lifetime_ms(at, now_ms)));
        let swapped: i64 = self.invoke(script).await?;
        Ok(swapped == 1)
    }

    async fn claim_once(&self, key: &str, expires_at_ms: u64, now_ms: u64) -> Result<bool, StoreError> {
        super::require_future_claim(expires_at_ms, now_ms)?;
        let ttl_ms = expires_at_ms.saturating_sub(now_ms);
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.keys.claim(key)).arg(expires_at_ms).arg("NX").arg("PX").arg(ttl_ms);
        let set: Option<String> = self.query(&cmd).await?;
        Ok(set.is_some())
    }

    async fn feed_append(&self, feed: &str, entry: Vec<u8>, now_ms: u64) -> Result<u64, StoreError> {
        let mut script = scripts::FEED_APPEND.prepare_invoke();
        script
            .key(self.keys.feed_meta(feed))
            .key(self.keys.feed_entries(feed))
            .arg(encode_feed_entry(now_ms, &entry));
        self.invoke(script).await
    }

    async fn feed_read(&self, feed: &str, after: u64, limit: usize) -> Result<FeedPage, StoreError> {
        let mut script = scripts::FEED_READ.prepare_invoke();
        script
            .key(self.keys.feed_meta(feed))
            .key(self.keys.feed_entries(feed))
            .arg(after)
            .arg(limit.min(MAX_PAGE_SIZE));
        let reply: Vec<Value> = self.invoke(script).await?;
        let mut items = reply.into_iter();
        let (Some(head), Some(too_old)) = (items.next(), items.next()) else {
            return Err(StoreError::CorruptData("short feed read reply".to_owned()));
        };
        let head = int(&head, "feed head")?;
        if int(&too_old, "feed flag")? == 1 {
            return Ok(feed_page(after, head, true, Vec::new()));
        }
        let mut entries = Vec::new();
        while let Some(cursor) = items.next() {
            let cursor = int(&cursor, "feed cursor")?;
            let raw = items.next().ok_or_else(|| StoreError::CorruptData("feed entry missing".to_owned()))?;
            entries.push(decode_feed_entry(cursor, bytes(raw, "feed entry")?)?);
        }
        Ok(feed_page(after, head, false, entries))
    }

    async fn feed_trim(&self, feed: &str, keep_last: usize) -> Result<u64, StoreError> {
        let mut script = scripts::FEED_TRIM.prepare_invoke();
        script.key(self.keys.feed_meta(feed)).key(self.keys.feed_entries(feed)).arg(keep_last);
        self.invoke(script).await
    }

    async fn log_append(&self, log: &str, entry: Vec<u8>) -> Result<u64, StoreError> {
        let mut script = scripts::LOG_APPEND.prepare_invoke();
        script.key(self.keys.log_seq(log)).key(self.keys.log_entries(log)).arg(entry);
        self.invoke(script).await
    }

    async fn log_append_if_last(
        &self,
        log: &str,
        expected_last_seq: Option<u64>,
        entry: Vec<u8>,
    ) -> Result<u64, LogAppendError> {
        let mut script = scripts::LOG_APPEND_IF_LAST.prepare_invoke();
        script
            .key(self.keys.log_seq(log))
            .key(self.keys.log_entries(log))
            .arg(expected_last_seq.unwrap_or(0))
            .arg(entry);
        let (appended, seq): (i64, u64) = self.invoke(script).await?;
        if appended == 1 {
            Ok(seq)
        } else {
            Err(LogAppendError::Conflict { last_seq: (seq > 0).then_some(seq) })
        }
    }

    async fn log_append_batch_if_last(
        &self,
        log: &str,
        expected_last_seq: Option<u64>,
        entries: Vec<Vec<u8>>,
    ) -> Result<u64, LogAppendError> {
        require_batch_size(&entries)?;
        let mut script = scripts::LOG_APPEND_BATCH_IF_LAST.prepare_invoke();
        script
            .key(self.keys.log_seq(log))
            .key(self.keys.log_entries(log))
            .arg(expected_last_seq.unwrap_or(0));
        for entry in entries {
            script.arg(entry);
        }
        let (appended, seq): (i64, u64) = self.invoke(script).await?;
        if appended == 1 {
            Ok(seq)
        } else {
            Err(LogAppendError::Conflict { last_seq: (seq > 0).then_some(seq) })
        }
    }

    async fn log_range(&self, log: &str, from_seq: u64, limit: usize) -> Result<Vec<LogEntry>, StoreError> {
        let limit = limit.min(MAX_PAGE_SIZE);
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut script = scripts::LOG_RANGE.prepare_invoke();
        script
            .key(self.keys.log_seq(log))
            .key(self.keys.log_entries(log))
            .key(self.keys.log_trimmed(log))
            .arg(from_seq.max(1))
            .arg(limit);
        let reply: Vec<Value> = self.invoke(script).await?;
        let mut items = reply.into_iter();
        let mut entries = Vec::new();
        while let Some(seq) = items.next() {
            let seq = int(&seq, "log seq")?;
            let raw = items.next().ok_or_else(|| StoreError::CorruptData("log entry missing".to_owned()))?;
            entries.push(LogEntry { seq, data: bytes(raw, "log entry")? });
        }
        Ok(entries)
    }

    async fn log_last(&self, log: &str) -> Result<Option<LogEntry>, StoreError> {
        let seq: Option<u64> = self.query(redis::cmd("GET").arg(self.keys.log_seq(log))).await?;
        let Some(seq) = seq.filter(|s| *s > 0) else {
            return Ok(None);
        };
        // The entry for `seq` was written in the same script that set `seq`, and log
        // entries never change, so this second read is consistent with the first.
        let data: Option<Vec<u8>> =
            self.query(redis::cmd("HGET").arg(self.keys.log_entries(log)).arg(seq)).await?;
        let data = data.ok_or_else(|| StoreError::CorruptData(format!("log {log:?} has no entry {seq}")))?;
        Ok(Some(LogEntry { seq, data }))
    }

    async fn log_trim(&self, log: &str, before_seq: u64) -> Result<u64, StoreError> {
        let mut script = scripts::LOG_TRIM.prepare_invoke();
        script
            .key(self.keys.log_seq(log))
            .key(self.keys.log_entries(log))
            .key(self.keys.log_trimmed(log))
            .arg(before_seq)
            .arg(MAX_TRIM_SIZE);
        self.invoke(script).await
    }

    async fn queue_push(
        &self,
        queue: &str,
        id: &str,
        data: Vec<u8>,
        due_at_ms: u64,
        max_pending: usize,
    ) -> Result<bool, StoreError> {
        let mut script = scripts::QUEUE_PUSH.prepare_invoke();
        script
            .key(self.keys.queue_pending(queue))
            .key(self.keys.queue_data(queue))
            .arg(id)
            .arg(due_at_ms)
            .arg(data)
            .arg(max_pending);
        let added: i64 = self.invoke(script).await?;
        Ok(added == 1)
    }

    async fn queue_claim(
        &self,
        queue: &str,
        now_ms: u64,
        lease_ms: u64,
        limit: usize,
    ) -> Result<Vec<QueueEntry>, StoreError> {
        require_positive_lease(lease_ms)?;
        let limit = limit.min(MAX_PAGE_SIZE);
        if limit == 0 {
            return Ok(Vec::new());
        }
        let until = now_ms.saturating_add(lease_ms);
        let mut script = scripts::QUEUE_CLAIM.prepare_invoke();
        script
            .key(self.keys.queue_pending(queue))
            .key(self.keys.queue_data(queue))
            .arg(now_ms)
            .arg(until)
            .arg(limit);
        let reply: Vec<Value> = self.invoke(script).await?;
        let mut items = reply.into_iter();
        let mut claimed = Vec::new();
        while let Some(id) = items.next() {
            let data = items.next().ok_or_else(|| StoreError::CorruptData("queue claim reply".to_owned()))?;
            claimed.push(QueueEntry {
                id: text(id, "queue id")?,
                at_ms: until,
                data: bytes(data, "queue data")?,
            });
        }
        Ok(claimed)
    }

    async fn queue_settle(
        &self,
        queue: &str,
        id: &str,
        claimed_until_ms: u64,
        outcome: QueueOutcome,
    ) -> Result<Option<u64>, StoreError> {
        let mut script = scripts::QUEUE_SETTLE.prepare_invoke();
        script
            .key(self.keys.queue_pending(queue))
            .key(self.keys.queue_dead(queue))
            .key(self.keys.queue_data(queue))
            .arg(id)
            .arg(claimed_until_ms);
        match outcome {
            QueueOutcome::Done => script.arg("done").arg("").arg(0).arg(0),
            QueueOutcome::Retry { data, due_at_ms } => script.arg("retry").arg(data).arg(due_at_ms).arg(0),
            QueueOutcome::Dead { data, at_ms, max_dead } => {
                script.arg("dead").arg(data).arg(at_ms).arg(max_dead)
            }
        };
        let settled: i64 = self.invoke(script).await?;
        Ok(u64::try_from(settled).ok())
    }

    async fn queue_list(
        &self,
        queue: &str,
        lane: QueueLane,
        limit: usize,
    ) -> Result<Vec<QueueEntry>, StoreError> {
        let limit = limit.min(MAX_PAGE_SIZE);
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut script = scripts::QUEUE_LIST.prepare_invoke();
        script.key(queue_lane_key(&self.keys, queue, lane)).key(self.keys.queue_data(queue)).arg(limit);
        let reply: Vec<Value> = self.invoke(script).await?;
        let mut items = reply.into_iter();
        let mut entries = Vec::new();
        while let Some(id) = items.next() {
            let (Some(at), Some(data)) = (items.next(), items.next()) else {
                return Err(StoreError::CorruptData("queue list reply".to_owned()));
            };
            entries.push(QueueEntry {
                id: text(id, "queue id")?,
                at_ms: int(&at, "queue time")?,
                data: bytes(data, "queue data")?,
            });
        }
        Ok(entries)
    }

    async fn queue_revive(
        &self,
        queue: &str,
        id: &str,
        data: Vec<u8>,
        due_at_ms: u64,
        max_pending: usize,
    ) -> Result<QueueRevive, StoreError> {
        let mut script = scripts::QUEUE_REVIVE.prepare_invoke();
        script
            .key(self.keys.queue_pending(queue))
            .key(self.keys.queue_dead(queue))
            .key(self.keys.queue_data(queue))
            .arg(id)
            .arg(due_at_ms)
            .arg(data)
            .arg(max_pending);
        let revived: i64 = self.invoke(script).await?;
        Ok(match revived {
            1 => QueueRevive::Revived,
            0 => QueueRevive::PendingFull,
            _ => QueueRevive::NotDead,
        })
    }

    async fn queue_delete(&self, queue: &str, lane: QueueLane, id: &str) -> Result<bool, StoreError> {
        let mut script = scripts::QUEUE_DELETE.prepare_invoke();
        script.key(queue_lane_key(&self.keys, queue, lane)).key(self.keys.queue_data(queue)).arg(id);
        let removed: i64 = self.invoke(script).await?;
        Ok(removed == 1)
    }

    async fn gcra(
        &self,
        key: &str,
        limit: u64,
        unit: Unit,
        op: RateLimitOp,
        now_ms: u64,
    ) -> Result<RateLimitResult, StoreError> {
        rate_limit::check_arguments(limit, now_ms)?;
        let interval = rate_limit::interval_us(limit, unit);
        // Huge credits only need to be "more than the debt": clamp them to stay exact.
        let credit = |units: u64| interval.saturating_mul(units).min(rate_limit::MAX_EXACT);
        let mut script = scripts::GCRA.prepare_invoke();
        script
            .key(self.keys.rate_limit(key))
            .arg(now_ms.saturating_mul(1_000))
            .arg(interval)
            .arg(interval.saturating_mul(limit))
            .arg(rate_limit::FORGET_AFTER_FULL_MS.saturating_mul(1_000));
        match op {
            RateLimitOp::Check { cost } if cost > limit => script.arg("check").arg(-1),
            RateLimitOp::Check { cost } => script.arg("check").arg(interval.saturating_mul(cost)),
            RateLimitOp::Lease { release, max_lease, holders, .. } => script
                .arg("lease")
                .arg(credit(release))
                .arg(max_lease.clamp(1, limit))
                .arg(holders.clamp(1, limit).saturating_mul(2)),
            RateLimitOp::Release { units } => script.arg("release").arg(credit(units)),
        };
        let (allowed, units, remaining, reset_after_ms, retry_after_ms): (i64, u64, u64, u64, u64) =
            self.invoke(script).await?;
        let allowed = allowed == 1;
        Ok(match op {
            RateLimitOp::Lease { ttl_ms, .. } => RateLimitResult {
                granted: units,
                expires_at_ms: if units > 0 { now_ms.saturating_add(ttl_ms) } else { 0 },
                remaining,
                reset_after_ms,
                retry_after_ms,
            },
            RateLimitOp::Check { cost } => RateLimitResult {
                granted: if allowed { cost } else { 0 },
                expires_at_ms: 0,
                remaining,
                reset_after_ms,
                retry_after_ms: if cost > limit { u64::MAX } else { retry_after_ms },
            },
            RateLimitOp::Release { .. } => {
                RateLimitResult { granted: 0, expires_at_ms: 0, remaining, reset_after_ms, retry_after_ms: 0 }
            }
        })
    }
}

impl RedisStore {
    async fn record_delete_key(&self, key: &str) -> Result<(), StoreError> {
        let _: i64 = self.query(redis::cmd("DEL").arg(key)).await?;
        Ok(())
    }
}

impl From<RedisError> for StoreError {
    fn from(error: RedisError) -> Self {
        store_error(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_transient_exactly_when_a_retry_may_succeed() {
        let refused = RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert!(matches!(store_error(refused), StoreError::Unavailable(_)));
        let node_gone =
            RedisError::from((ErrorKind::ClientError, CLUSTER_NODE_GONE, "127.0.0.1:7002".to_owned()));
        assert!(matches!(store_error(node_gone), StoreError::Unavailable(_)));
        let cluster_down = RedisError::from((ErrorKind::ClusterDown, "CLUSTERDOWN"));
        assert!(store_error(cluster_down).is_transient());
        let untrusted = RedisError::from(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        ));
        let error = store_error(untrusted);
        assert!(!error.is_transient(), "a certificate problem does not go away by retrying");
        assert!(error.to_string().contains("--redis-ca-file"), "{error}");
        let plain_port = RedisError::from(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType),
        ));
        assert!(store_error(plain_port).to_string().contains("does that port serve TLS?"));
    }

    #[test]
    fn scores_parse_in_integer_and_exponent_form() {
        assert_eq!(parse_score("1700000000000"), Some(1_700_000_000_000));
        assert_eq!(parse_score("1.7e12"), Some(1_700_000_000_000));
        assert_eq!(parse_score("nope"), None);
        assert_eq!(parse_score("-1"), None);
    }

    #[test]
    fn feed_entries_round_trip_with_their_append_time() {
        let raw = encode_feed_entry(42, b"revoked");
        let entry = decode_feed_entry(7, raw).unwrap();
        assert_eq!(entry.cursor, 7);
        assert_eq!(entry.appended_at_ms, 42);
        assert_eq!(entry.data, b"revoked");
        assert!(decode_feed_entry(1, vec![0; 3]).is_err());
    }
}
