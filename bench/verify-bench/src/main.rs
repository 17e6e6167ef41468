//! Times `portcullis_core::jwt::Provider::verify` for each algorithm of a bench input
//! (written by `mint-bench-tokens`), plus a verified-token cache hit for the same token,
//! and prints one JSON object. The same source runs natively and as a `wasm32-wasip1`
//! command (under node's WASI, i.e. V8), so the two can be compared in one run.
//!
//! Usage: `verify-bench <input.json> [target-ms-per-case]`

use std::hint::black_box;
use std::time::{Duration, Instant};

use portcullis_core::jwt::cache::VerifiedTokenCache;
use portcullis_core::jwt::provider::{KeySource, Provider, ProviderConfig};
use serde_json::{json, Value};

/// Batches per case; the median batch is reported.
const BATCHES: usize = 7;

fn main() {
    if let Err(e) = run() {
        eprintln!("verify-bench: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let args: Vec<String> = std::env::args().collect();
    let path = args.get(1).ok_or("usage: verify-bench <input.json> [target-ms-per-case]")?;
    let target_ms: u64 = match args.get(2) {
        Some(s) => s.parse().map_err(|_| format!("bad target-ms `{s}`"))?,
        None => 700,
    };
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    let input: Value = serde_json::from_slice(&bytes).map_err(|e| format!("bad input json: {e}"))?;
    let now = input["now"].as_u64().ok_or("input: `now` missing")?;
    let cases = input["cases"].as_array().ok_or("input: `cases` missing")?;

    let mut results = Vec::new();
    for case in cases {
        results.push(bench_case(case, &input, now, Duration::from_millis(target_ms))?);
    }
    let platform = if cfg!(target_arch = "wasm32") { "wasm32-wasip1" } else { "native" };
    println!("{}", json!({ "platform": platform, "results": results }));
    Ok(())
}

fn bench_case(case: &Value, input: &Value, now: u64, target: Duration) -> Result<Value, String> {
    let alg = case["alg"].as_str().ok_or("case: `alg` missing")?;
    let token = case["token"].as_str().ok_or("case: `token` missing")?;
    // The provider object the Envoy benchmark gives the filter, compiled the same way.
    let config: ProviderConfig = serde_json::from_value(json!({
        "issuer": input["issuer"],
        "audiences": [input["audience"]],
        "algorithms": [alg],
        "jwks": { "keys": [case["jwk"]] },
    }))
    .map_err(|e| format!("{alg}: provider config: {e}"))?;
    let provider = Provider::compile("bench", config).map_err(|e| format!("{alg}: {e}"))?;
    let KeySource::Inline(keys) = provider.key_source() else {
        return Err(format!("{alg}: expected inline keys"));
    };
    let verified = provider
        .verify(token, keys, now)
        .map_err(|r| format!("{alg}: the bench token does not verify: {r}"))?;

    let verify_ns = time_per_op(target, || {
        let ok = provider.verify(black_box(token), keys, now).is_ok();
        black_box(ok);
    });

    // What a cached request costs instead: the LRU lookup (SHA-256 of provider and token).
    let mut cache = VerifiedTokenCache::new(4096);
    cache.insert("bench", token, verified, now, 300);
    let cache_hit_ns = time_per_op(target / 4, || {
        let hit = cache.get("bench", black_box(token), now).is_some();
        black_box(hit);
    });

    Ok(json!({
        "alg": alg,
        "token_bytes": token.len(),
        "verify_ns": verify_ns,
        "cache_hit_ns": cache_hit_ns,
    }))
}

/// Median and minimum nanoseconds per call over `BATCHES` batches sized so that all of
/// them take about `target`, after one warm-up batch.
fn time_per_op(target: Duration, mut op: impl FnMut()) -> Value {
    // Calibrate: double until one batch takes at least 1/BATCHES of the target.
    let per_batch = target / BATCHES as u32;
    let mut n: u64 = 1;
    loop {
        let start = Instant::now();
        for _ in 0..n {
            op();
        }
        if start.elapsed() >= per_batch || n >= 1 << 30 {
            break;
        }
        n *= 2;
    }
    let mut samples: Vec<f64> = (0..BATCHES)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..n {
                op();
            }
            start.elapsed().as_nanos() as f64 / n as f64
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    json!({
        "median": samples[BATCHES / 2],
        "min": samples[0],
        "iters_per_batch": n,
        "batches": BATCHES,
    })
}
