//! What an operator scrapes: a real Envoy with the filter and the stat tags of
//! `envoy/demo.yaml`, the real control plane (embedded store) behind it. Requests that
//! touch every labelled family of the filter's counters are driven through Envoy, then
//! both Prometheus endpoints are read:
//!
//! - Envoy's `/stats/prometheus` carries the names inside the filter's counters as
//!   labels (`provider`, `reason`, `limit`, `outcome`, `rule`), dotted names included,
//!   every decision on a request a rule matched (a stateful refusal too) is counted
//!   under that rule, no family name embeds a configured name, and Envoy logs no
//!   `Skipping duplicate tag` for the tags;
//! - every metric the shipped Grafana dashboard and PrometheusRule use
//!   (`envoy/observability/`) is exported by one of the two, and every family Envoy
//!   exports for the filter is documented in docs/observability.md.

use std::collections::BTreeSet;
use std::time::Duration;

use portcullis_e2e::tokens::{claims, jwks, now, FixtureKey};
use portcullis_e2e::{
    control_plane_section, eventually, http, repo_root, ControlPlane, Envoy, EnvoyClusters, StoreKind,
    TestServer, Workdir,
};
use serde_json::{json, Value};

/// Provider, limit and rule names with dots: the tag regexes must keep them whole.
const INLINE_PROVIDER: &str = "partner.idp";
const REMOTE_PROVIDER: &str = "cp.main";
const LIMIT: &str = "per.sub";
const API_RULE: &str = "api.v1";
/// A shadow rule: counts what it would refuse, lets it through.
const SHADOW_RULE: &str = "audit.shadow";

fn plugin_config(key: &FixtureKey) -> Value {
    json!({
        "realm": "e2e",
        "onNoMatch": "allow",
        "providers": {
            INLINE_PROVIDER: {
                "issuer": "https://issuer.test",
                "audiences": ["e2e"],
                "jwks": jwks(&[key]),
            },
            REMOTE_PROVIDER: {
                "issuer": "portcullis",
                "audiences": ["portcullis"],
                "remoteJwks": { "cluster": "portcullis_control_plane", "authority": "control-plane" }
            }
        },
        "rules": [
            { "name": API_RULE, "match": { "pathPrefix": "/api/" }, "requires": { "provider": INLINE_PROVIDER } },
            { "name": "cp", "match": { "pathPrefix": "/cp/" }, "requires": { "provider": REMOTE_PROVIDER } },
            { "name": "login", "match": { "path": "/login", "methods": ["POST"] }, "requires": "none" },
            { "name": SHADOW_RULE, "match": { "pathPrefix": "/audit/" }, "requires": { "provider": INLINE_PROVIDER },
              "shadow": true }
        ],
        "controlPlane": control_plane_section(2000),
        "revocation": { "pollIntervalMs": 500, "maxStalenessSeconds": 60 },
        "rateLimits": [
            { "name": LIMIT, "limit": 2, "unit": "minute", "descriptors": ["claim:sub"], "rules": [API_RULE] }
        ],
        "lockout": {
            "routes": [{ "path": "/login", "methods": ["POST"] }],
            "account": "json:username",
            "timeoutMs": 2000,
            "policy": { "maxFailures": 1, "windowMs": 60000, "baseLockMs": 60000, "maxLockMs": 60000 }
        }
    })
}

// Fields drop in order: processes first, the work directory (with their logs) last.
struct Scraped {
    envoy: Envoy,
    cp: ControlPlane,
    _server: TestServer,
    _dir: Workdir,
}

async fn status(r: reqwest::RequestBuilder) -> u16 {
    r.send().await.expect("request through envoy").status().as_u16()
}

/// Starts the stack and drives one request of each kind the labelled counters count.
async fn driven_stack() -> Scraped {
    let key = FixtureKey::load("es256-a");
    let dir = Workdir::new();
    let cp = ControlPlane::start(dir.path(), StoreKind::Embedded).await;
    let server = TestServer::start(json!({ "keys": [] })).await;
    let clusters = EnvoyClusters::beside(server.port, &cp);
    let envoy = Envoy::start(dir.path(), &plugin_config(&key), &clusters).await;

    let alice = key.sign(&claims("alice", "read"));
    let mut expired = claims("alice", "read");
    expired["iat"] = json!(now() - 1200);
    expired["exp"] = json!(now() - 600);
    let expired = key.sign(&expired);

    assert_eq!(status(http().get(envoy.url("/api/a"))).await, 401, "no token");
    assert_eq!(status(http().get(envoy.url("/api/a")).bearer_auth(&expired)).await, 401, "expired");
    for _ in 0..2 {
        assert_eq!(status(http().get(envoy.url("/api/a")).bearer_auth(&alice)).await, 200);
    }
    assert_eq!(status(http().get(envoy.url("/api/a")).bearer_auth(&alice)).await, 429, "third in a minute");
    assert_eq!(status(http().get(envoy.url("/audit/a"))).await, 200, "a shadow rule lets it through");

    let minted = cp.issue_token("bob", &["read"]).await;
    assert_eq!(status(http().get(envoy.url("/cp/a")).bearer_auth(&minted)).await, 200, "remote JWKS");

    let login = json!({ "username": "carol", "password": "wrong" });
    assert_eq!(status(http().post(envoy.url("/login")).json(&login)).await, 401, "a failed login");
    let unreadable = http().post(envoy.url("/login")).header("content-type", "text/plain").body("carol");
    assert_eq!(status(unreadable).await, 415, "a login body that is not JSON");

    // The failed login's report reaches the control plane after the reply; then the
    // account is locked (one failure allowed).
    eventually(Duration::from_secs(20), "the failed login is reported", || async {
        cp.metric(r#"portcullis_lockout_reports_total{outcome="failure"}"#).await == 1
    })
    .await;
    assert_eq!(status(http().post(envoy.url("/login")).json(&login)).await, 429, "a locked account");
    eventually(Duration::from_secs(20), "a revocation snapshot is loaded", || async {
        envoy.counter("wasmcustom.portcullis.revocation.poll_ok").await >= 1
    })
    .await;
    Scraped { envoy, cp, _server: server, _dir: dir }
}

/// The samples of a Prometheus text exposition: (series with labels, value).
fn samples(text: &str) -> Vec<(&str, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.rsplit_once(' '))
        .filter_map(|(series, value)| Some((series, value.trim().parse().ok()?)))
        .collect()
}

/// The value of a series given as `name{label="value",...}`, whatever order Envoy writes
/// the labels in.
fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples(text).into_iter().find_map(|(series, v)| {
        let (series_name, rest) = series.split_once('{').unwrap_or((series, "}"));
        let body = rest.strip_suffix('}')?;
        let mut found: Vec<&str> = if body.is_empty() { Vec::new() } else { body.split(',').collect() };
        found.sort_unstable();
        let mut wanted: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
        wanted.sort_unstable();
        (series_name == name && found == wanted).then_some(v)
    })
}

/// Family names declared by `# TYPE` lines.
fn families(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_prometheus_output_carries_provider_reason_limit_outcome_and_rule_labels() {
    let s = driven_stack().await;
    let text = s.envoy.prometheus().await;
    let expect = |name: &str, labels: &[(&str, &str)], at_least: f64| {
        let got = value(&text, name, labels);
        assert!(
            got.is_some_and(|v| v >= at_least),
            "{name}{labels:?}: {got:?}, wanted at least {at_least}; portcullis series:\n{}",
            text.lines().filter(|l| l.starts_with("portcullis_")).collect::<Vec<_>>().join("\n")
        );
    };
    expect("portcullis_requests_denied", &[("reason", "missing_token")], 1.0);
    expect("portcullis_requests_denied", &[("reason", "expired")], 1.0);
    expect("portcullis_requests_denied", &[("reason", "rate_limited")], 1.0);
    expect("portcullis_provider_denied", &[("provider", INLINE_PROVIDER), ("reason", "expired")], 1.0);
    expect("portcullis_provider_allowed", &[("provider", INLINE_PROVIDER)], 2.0);
    expect("portcullis_provider_allowed", &[("provider", REMOTE_PROVIDER)], 1.0);
    expect("portcullis_jwks_fetch_ok", &[("provider", REMOTE_PROVIDER)], 1.0);
    expect("portcullis_ratelimit_allowed", &[("limit", LIMIT)], 2.0);
    expect("portcullis_ratelimit_denied", &[("limit", LIMIT)], 1.0);
    expect("portcullis_lockout_reports", &[("outcome", "failure")], 1.0);
    expect("portcullis_lockout_refused", &[("reason", "login_content_type")], 1.0);
    expect("portcullis_requests_allowed", &[], 3.0);

    // Per rule, exactly: every decision under the rule that took it, the rate limit's
    // 429 (decided after the control plane's answer) and the lockout's included.
    let exactly = |name: &str, labels: &[(&str, &str)], wanted: f64| {
        assert_eq!(value(&text, name, labels), Some(wanted), "{name}{labels:?}");
    };
    exactly("portcullis_rule_allowed", &[("rule", API_RULE)], 2.0);
    exactly("portcullis_rule_denied", &[("rule", API_RULE), ("reason", "missing_token")], 1.0);
    exactly("portcullis_rule_denied", &[("rule", API_RULE), ("reason", "expired")], 1.0);
    exactly("portcullis_rule_denied", &[("rule", API_RULE), ("reason", "rate_limited")], 1.0);
    exactly("portcullis_rule_allowed", &[("rule", "cp")], 1.0);
    exactly("portcullis_rule_allowed", &[("rule", "login")], 1.0);
    exactly("portcullis_rule_denied", &[("rule", "login"), ("reason", "login_content_type")], 1.0);
    exactly("portcullis_rule_denied", &[("rule", "login"), ("reason", "locked_out")], 1.0);
    exactly("portcullis_rule_shadow_denied", &[("rule", SHADOW_RULE), ("reason", "missing_token")], 1.0);
    let rule_series: Vec<&str> = samples(&text)
        .into_iter()
        .map(|(series, _)| series)
        .filter(|series| series.starts_with("portcullis_rule_"))
        .collect();
    assert_eq!(rule_series.len(), 9, "no other per-rule series: {rule_series:#?}");

    // No family carries a configured name in its own name: every one was lifted out.
    let leaked: Vec<String> = families(&text)
        .into_iter()
        .filter(|f| f.starts_with("portcullis_"))
        .filter(|f| ["partner", "idp", "cp_main", "per_sub", "api_v1", "audit"].iter().any(|n| f.contains(n)))
        .collect();
    assert!(leaked.is_empty(), "families that embed a provider, limit or rule name: {leaked:?}");

    // One regex per tag: Envoy skips (and warns of) a tag's second regex on a name the
    // first one matched.
    let log = s.envoy.proc.log_text();
    let duplicates: Vec<&str> = log.lines().filter(|l| l.contains("Skipping duplicate tag")).collect();
    assert!(duplicates.is_empty(), "Envoy skipped stat tags:\n{}", duplicates.join("\n"));
}

// ---------------------------------------------------------------------------------
// The dashboard and the alert rules

const RULES: &str = "envoy/observability/prometheus-rules.yaml";
const DASHBOARD: &str = "envoy/observability/grafana-dashboard.json";

/// Series Prometheus makes itself for every scrape target, exported by nobody.
const SYNTHETIC: &[&str] = &["up"];

/// The metric names a PromQL expression reads: identifiers that are not functions,
/// keywords, label names or durations. Label matchers (`{...}`), ranges (`[5m]`),
/// string literals and grouping clauses (`by (...)`, `on (...)`) are dropped first.
fn promql_metric_names(expr: &str) -> BTreeSet<String> {
    const KEYWORDS: &[&str] = &[
        "and",
        "or",
        "unless",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "offset",
        "bool",
    ];
    const AGGREGATIONS: &[&str] = &[
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
        "limitk",
        "limit_ratio",
    ];
    // Drop strings, then everything between brackets and braces.
    let mut plain = String::new();
    let (mut in_string, mut depth) = (false, 0usize);
    for c in expr.chars() {
        match c {
            '"' if depth == 0 => in_string = !in_string,
            _ if in_string => {}
            '{' | '[' => depth += 1,
            '}' | ']' => depth = depth.saturating_sub(1),
            _ if depth == 0 => plain.push(c),
            _ => {}
        }
    }
    let chars: Vec<char> = plain.chars().collect();
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut names = BTreeSet::new();
    let mut i = 0;
    let mut grouping = false;
    while i < chars.len() {
        let c = chars[i];
        if c.is_ascii_digit() || c == '.' || c == '$' {
            // A number, a duration or a dashboard variable: skip it whole.
            while i < chars.len() && (word(chars[i]) || chars[i] == '.' || chars[i] == '$') {
                i += 1;
            }
            continue;
        }
        if !word(c) {
            if c == ')' {
                grouping = false;
            }
            i += 1;
            continue;
        }
        let start = i;
        while i < chars.len() && word(chars[i]) {
            i += 1;
        }
        let ident: String = chars[start..i].iter().collect();
        let next = chars[i..].iter().find(|c| !c.is_whitespace()).copied();
        if grouping {
            continue; // a label name of by (...), on (...), ...
        }
        if KEYWORDS.contains(&ident.as_str()) {
            grouping = next == Some('(') && !matches!(ident.as_str(), "and" | "or" | "unless" | "bool");
            continue;
        }
        // Aggregations may put their grouping first: `sum by (x) (expr)`.
        if next != Some('(') && !AGGREGATIONS.contains(&ident.as_str()) {
            names.insert(ident);
        }
    }
    names
}

#[test]
fn promql_metric_names_skip_functions_labels_keywords_and_durations() {
    let names = promql_metric_names(
        r#"histogram_quantile(0.99, sum by (route, le) (rate(a_bucket{route=~"/v1/.*"}[5m])))
           > 0.5 * (sum without (pod) (b) + on (x) group_left (y) c offset 1d) and d > bool 90 * 86400
           unless time() - e > $__rate_interval"#,
    );
    assert_eq!(names, ["a_bucket", "b", "c", "d", "e"].into_iter().map(String::from).collect());
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo_root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn rules() -> serde_yaml::Value {
    serde_yaml::from_str(&read(RULES)).expect("the rules are YAML")
}

/// Every alert's expression, by alert name.
fn rule_expressions() -> Vec<(String, String)> {
    let rules = rules();
    let groups = rules["spec"]["groups"].as_sequence().cloned().unwrap_or_default();
    groups
        .iter()
        .flat_map(|g| g["rules"].as_sequence().cloned().unwrap_or_default())
        .map(|r| {
            let name = r["alert"].as_str().or(r["record"].as_str()).unwrap_or("?").to_string();
            (name, r["expr"].as_str().unwrap_or_default().to_string())
        })
        .collect()
}

/// Every panel query of the dashboard, by panel title.
fn dashboard_expressions() -> Vec<(String, String)> {
    let dashboard: Value = serde_json::from_str(&read(DASHBOARD)).expect("the dashboard is JSON");
    let mut found = Vec::new();
    for panel in dashboard["panels"].as_array().into_iter().flatten() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let title = panel["title"].as_str().unwrap_or("?").to_string();
            found.push((title, target["expr"].as_str().unwrap_or_default().to_string()));
        }
    }
    found
}

#[test]
fn prometheus_rule_is_a_well_formed_prometheus_operator_resource() {
    let doc = rules();
    assert_eq!(doc["apiVersion"].as_str(), Some("monitoring.coreos.com/v1"));
    assert_eq!(doc["kind"].as_str(), Some("PrometheusRule"));
    assert!(doc["metadata"]["name"].as_str().is_some_and(|n| !n.is_empty()), "metadata.name");
    let groups = doc["spec"]["groups"].as_sequence().expect("spec.groups is a list");
    assert!(!groups.is_empty(), "spec.groups is empty");
    let duration = |s: &str| {
        !s.is_empty()
            && s.split_inclusive(|c: char| c.is_ascii_alphabetic()).all(|part| {
                let unit = part.trim_start_matches(|c: char| c.is_ascii_digit());
                part.len() > unit.len() && ["s", "m", "h", "d", "w", "y"].contains(&unit)
            })
    };
    let mut names = BTreeSet::new();
    let mut group_names = BTreeSet::new();
    for (g, group) in groups.iter().enumerate() {
        let group_name = group["name"].as_str().unwrap_or_else(|| panic!("spec.groups[{g}].name"));
        assert!(group_names.insert(group_name.to_string()), "group {group_name} twice");
        let rules = group["rules"].as_sequence().unwrap_or_else(|| panic!("spec.groups[{g}].rules"));
        assert!(!rules.is_empty(), "spec.groups[{g}].rules is empty");
        for (r, rule) in rules.iter().enumerate() {
            let at = format!("spec.groups[{g}].rules[{r}]");
            let map = rule.as_mapping().unwrap_or_else(|| panic!("{at} is not a mapping"));
            for key in map.keys() {
                let key = key.as_str().unwrap_or_default();
                assert!(
                    ["alert", "record", "expr", "for", "keep_firing_for", "labels", "annotations"]
                        .contains(&key),
                    "{at}: unknown field {key}"
                );
            }
            let alert = rule["alert"].as_str().unwrap_or_else(|| panic!("{at}.alert (only alerts here)"));
            assert!(names.insert(alert.to_string()), "alert {alert} twice");
            let expr = rule["expr"].as_str().unwrap_or_else(|| panic!("{at}.expr"));
            assert!(!promql_metric_names(expr).is_empty(), "{alert}: expr reads no metric");
            assert_eq!(expr.matches('(').count(), expr.matches(')').count(), "{alert}: unbalanced ()");
            let wait = rule["for"].as_str().unwrap_or_else(|| panic!("{alert}: for"));
            assert!(duration(wait), "{alert}: for `{wait}` is not a Prometheus duration");
            let severity = rule["labels"]["severity"].as_str().unwrap_or_default();
            assert!(
                ["critical", "warning", "info"].contains(&severity),
                "{alert}: labels.severity `{severity}`"
            );
            assert!(
                rule["annotations"]["summary"].as_str().is_some_and(|s| !s.is_empty()),
                "{alert}: summary"
            );
        }
    }
    // What the alerts must cover.
    for needed in [
        "portcullis_revocation_staleness_seconds",
        "portcullis_jwks_fetch_failed",
        "portcullis_store_errors_total",
        "portcullis_store_operation_duration_seconds_bucket",
        "portcullis_burst_alerts_total",
        "portcullis_webhook_dead_letters",
        "portcullis_lockouts_started_total",
        "portcullis_requests_denied",
        "up",
    ] {
        assert!(
            rule_expressions().iter().any(|(_, e)| promql_metric_names(e).contains(needed)),
            "no alert reads {needed}"
        );
    }
}

#[test]
fn dashboard_is_grafana_json_with_a_prometheus_query_in_every_panel() {
    let dashboard: Value = serde_json::from_str(&read(DASHBOARD)).expect("the dashboard is JSON");
    assert!(dashboard["title"].is_string() && dashboard["uid"].is_string(), "title and uid");
    let variables = dashboard["templating"]["list"].as_array().expect("templating.list");
    assert!(variables.iter().any(|v| v["name"] == "datasource" && v["query"] == "prometheus"));
    let panels = dashboard["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    for panel in panels {
        let title = panel["title"].as_str().expect("every panel has a title");
        assert!(ids.insert(panel["id"].as_u64().expect("panel id")), "{title}: id twice");
        assert!(panel["gridPos"]["w"].is_u64() && panel["gridPos"]["h"].is_u64(), "{title}: gridPos");
        if panel["type"] == "row" {
            continue;
        }
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no query");
        for target in targets {
            let expr = target["expr"].as_str().unwrap_or_default();
            assert!(!promql_metric_names(expr).is_empty(), "{title}: `{expr}` reads no metric");
            assert_eq!(expr.matches('(').count(), expr.matches(')').count(), "{title}: unbalanced ()");
        }
    }
}

/// Every name a scrape exports: its series, and those its `# TYPE` lines declare (a
/// family without samples yet: `x counter` declares `x_total` in OpenMetrics and `x`
/// in Envoy's output, a histogram its `_bucket`, `_sum` and `_count`).
fn exported(text: &str) -> BTreeSet<String> {
    let mut names: BTreeSet<String> = samples(text)
        .into_iter()
        .map(|(series, _)| series.split('{').next().unwrap_or(series).to_string())
        .collect();
    for line in text.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
        let mut parts = line.split_whitespace();
        let (Some(family), Some(kind)) = (parts.next(), parts.next()) else { continue };
        let suffixes: &[&str] = match kind {
            "counter" => &["", "_total"],
            "histogram" => &["_bucket", "_sum", "_count"],
            "info" => &["_info"],
            _ => &[""],
        };
        names.extend(suffixes.iter().map(|s| format!("{family}{s}")));
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_and_alert_rules_use_is_exported_and_documented() {
    let mut s = driven_stack().await;
    let control_plane = http()
        .get(format!("{}/metrics", s.cp.url()))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics body");

    // The failure counters exist once something fails: stop the control plane, then
    // a rate-limited request, a token with a key the remote JWKS lacks and the next
    // revocation poll all find it gone.
    s.cp.proc.kill();
    let other_key = FixtureKey::load("es256-b");
    let mut foreign = claims("dave", "read");
    foreign["iss"] = json!("portcullis");
    foreign["aud"] = json!("portcullis");
    let foreign = other_key.sign(&foreign);
    let fresh = FixtureKey::load("es256-a").sign(&claims("erin", "read"));
    let envoy = &s.envoy;
    eventually(Duration::from_secs(30), "the filter counts the control plane's absence", || async {
        let _ = http().get(envoy.url("/api/a")).bearer_auth(&fresh).send().await;
        let _ = http().get(envoy.url("/cp/a")).bearer_auth(&foreign).send().await;
        envoy.counter("wasmcustom.portcullis.guard.control_plane_unavailable").await >= 1
            && envoy.counter(&format!("wasmcustom.portcullis.jwks.{REMOTE_PROVIDER}.fetch_failed")).await >= 1
            && envoy.counter("wasmcustom.portcullis.revocation.poll_failed").await >= 1
    })
    .await;
    let envoy_text = envoy.prometheus().await;

    let control_plane_names = exported(&control_plane);
    let envoy_names = exported(&envoy_text);
    let mut missing = Vec::new();
    for (origin, (place, expr)) in rule_expressions()
        .into_iter()
        .map(|e| (RULES, e))
        .chain(dashboard_expressions().into_iter().map(|e| (DASHBOARD, e)))
    {
        for name in promql_metric_names(&expr) {
            let known = control_plane_names.contains(&name)
                || envoy_names.contains(&name)
                || SYNTHETIC.contains(&name.as_str());
            if !known {
                missing.push(format!("{origin} ({place}): {name}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "used but exported by neither the control plane nor Envoy:\n  {}\ncontrol plane: {control_plane_names:?}\nenvoy: {:?}",
        missing.join("\n  "),
        envoy_names.iter().filter(|n| n.starts_with("portcullis")).collect::<Vec<_>>()
    );

    // Every family either side exports for Portcullis is described in the docs.
    let docs = read("docs/observability.md");
    let undocumented: Vec<String> = families(&control_plane)
        .into_iter()
        .chain(families(&envoy_text))
        .filter(|f| f.starts_with("portcullis_") && !docs.contains(&format!("`{f}")))
        .collect();
    assert!(undocumented.is_empty(), "docs/observability.md does not describe: {undocumented:?}");
}

#[test]
fn istio_bootstrap_override_carries_the_same_stat_tags_as_the_demo_bootstrap() {
    let doc: serde_yaml::Value =
        serde_yaml::from_str(&read("envoy/observability/istio-stats.yaml")).expect("YAML");
    assert_eq!(doc["kind"].as_str(), Some("ConfigMap"));
    let bootstrap = doc["data"]["custom_bootstrap.json"].as_str().expect("data.custom_bootstrap.json");
    let bootstrap: Value = serde_json::from_str(bootstrap).expect("custom_bootstrap.json is JSON");
    let tags = &portcullis_e2e::stats_config()["stats_tags"];
    assert!(tags.as_array().is_some_and(|t| !t.is_empty()), "envoy/demo.yaml has stats tags");
    assert_eq!(
        &bootstrap["stats_config"]["stats_tags"], tags,
        "istio-stats.yaml drifted from envoy/demo.yaml"
    );
}
