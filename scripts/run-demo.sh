#!/usr/bin/env bash
# The demo stack in the foreground: control plane (embedded store under .run/data),
# a demo upstream that echoes what it receives, and Envoy with the Portcullis filter in
# front of it. Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
RUN=$ROOT/.run
BIN=$ROOT/target/debug
ENVOY=${PORTCULLIS_ENVOY:-$ROOT/.venv/bin/envoy}
mkdir -p "$RUN/data" "$RUN/logs"

# A local admin token (for the CLI) and fleet credential (for Envoy), created once and
# kept out of git (.run/ is ignored).
for secret in admin-token fleet-credential; do
  if [ ! -s "$RUN/$secret" ]; then
    (umask 077; head -c 48 /dev/urandom | base64 | tr -d '=+/\n' > "$RUN/$secret")
  fi
done

for port in 9090 9091 8080 10000 9901; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "port $port is in use: stop whatever listens there (an earlier 'make run'?) and retry" >&2
    exit 1
  fi
done

pids=()
stop() {
  trap - INT TERM EXIT
  echo; echo "stopping the demo stack..."
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  echo "stopped."
  exit 0
}
trap stop INT TERM EXIT

wait_for() { # url name
  for _ in $(seq 1 100); do
    curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "$2 did not become ready; its log: $RUN/logs/$2.log" >&2
  tail -n 30 "$RUN/logs/$2.log" >&2 || true
  exit 1
}

PORTCULLIS_ADMIN_TOKEN_FILE=$RUN/admin-token PORTCULLIS_FLEET_CREDENTIAL_FILE=$RUN/fleet-credential \
  PORTCULLIS_DATA_DIR=$RUN/data PORTCULLIS_STORE=embedded \
  PORTCULLIS_ADMIN_LISTEN=127.0.0.1:9090 PORTCULLIS_INTERNAL_LISTEN=127.0.0.1:9091 \
  "$BIN/portcullis-control-plane" >"$RUN/logs/control-plane.log" 2>&1 &
pids+=($!)
"$BIN/portcullis-demo-upstream" --listen 127.0.0.1:8080 >"$RUN/logs/upstream.log" 2>&1 &
pids+=($!)
wait_for http://127.0.0.1:9090/readyz control-plane
wait_for http://127.0.0.1:8080/ upstream

# The filter reads the fleet credential from Envoy's environment (envoy/demo.yaml,
# host_env_keys); it never appears in the configuration.
PORTCULLIS_FLEET_CREDENTIAL=$(cat "$RUN/fleet-credential") \
  "$ENVOY" -c envoy/demo.yaml --base-id 1 --log-level info >"$RUN/logs/envoy.log" 2>&1 &
pids+=($!)
wait_for http://127.0.0.1:9901/ready envoy

cat <<TXT

Portcullis demo stack is up (logs in .run/logs/):
  Envoy + filter  http://127.0.0.1:10000   (admin http://127.0.0.1:9901)
  control plane   http://127.0.0.1:9090    (admin API for the CLI; embedded store in .run/data)
                  http://127.0.0.1:9091    (internal: what Envoy calls, with the fleet credential)
  demo upstream   http://127.0.0.1:8080    (echoes what reaches it)

Try, in another terminal from $ROOT:

  # a public route: 200, no token needed
  curl -i http://127.0.0.1:10000/public/hello

  # a signed route (RFC 9421, hmac-sha256; inline demo key, development only): 200, and
  # the upstream sees x-portcullis-signature-key: demo-partner. Unsigned: 401 Signature
  scripts/sign-request.py http://127.0.0.1:10000/webhooks/demo demo-partner \
    ZGVtby1vbmx5LXNlY3JldC1kby1ub3QtdXNlLWluLXByb2R1Y3Rpb24h '{"hello":"world"}'
  curl -i -X POST http://127.0.0.1:10000/webhooks/demo

  # a protected route without a token: 401 with WWW-Authenticate: Bearer realm="portcullis-demo"
  curl -i http://127.0.0.1:10000/api/orders

  # the control plane's internal listener answers only Envoys (the fleet credential
  # .run/fleet-credential): 401 here, and the admin API is not there at all (404)
  curl -i http://127.0.0.1:9091/v1/feed
  curl -i http://127.0.0.1:9091/admin/v1/status

  # get a token from the control plane (the CLI talks to its admin API)
  export PORTCULLIS_ADMIN_TOKEN_FILE=.run/admin-token
  TOKEN=\$(target/debug/portcullis token issue --sub alice --scope orders:read)

  # the protected route with it: 200; the upstream sees x-portcullis-sub: alice
  curl -i -H "Authorization: Bearer \$TOKEN" http://127.0.0.1:10000/api/orders

  # a tampered token: 401 with error="invalid_token", error_description="bad_signature"
  curl -i -H "Authorization: Bearer \${TOKEN:0:-10}AAAAAAAAAA" http://127.0.0.1:10000/api/orders

  # a route that needs a scope the token lacks: 403 insufficient_scope
  curl -i -H "Authorization: Bearer \$TOKEN" -X POST http://127.0.0.1:10000/api/orders

  # revoke that token: within about a second it gets 401 error_description="revoked"
  target/debug/portcullis revoke token "\$TOKEN"
  curl -i -H "Authorization: Bearer \$TOKEN" http://127.0.0.1:10000/api/orders

  # rate limit: 10 per minute per user; the 11th gets 429 with Retry-After and RateLimit-* headers
  for i in \$(seq 11); do curl -s -o /dev/null -w '%{http_code} ' -H "Authorization: Bearer \$TOKEN" http://127.0.0.1:10000/api/orders; done; echo

  # lockout: 5 failed logins for one account, then the 6th is refused (429, Retry-After: 30)
  # without reaching the upstream. Both the account and your address (127.0.0.1) are
  # locked; list and clear them with the CLI, and bob's right password passes again
  for i in \$(seq 6); do curl -s -o /dev/null -w '%{http_code} ' -H 'content-type: application/json' \
    -d '{"username":"bob","password":"wrong"}' http://127.0.0.1:10000/login; done; echo
  target/debug/portcullis lockouts list
  target/debug/portcullis lockouts clear --account bob
  target/debug/portcullis lockouts clear --ip 127.0.0.1
  sleep 1; curl -i -H 'content-type: application/json' \
    -d '{"username":"bob","password":"correct"}' http://127.0.0.1:10000/login

  # rotate the signing key: a token signed by the new key passes on its first request
  target/debug/portcullis keys rotate
  TOKEN=\$(target/debug/portcullis token issue --sub alice --scope orders:read)
  curl -i -H "Authorization: Bearer \$TOKEN" http://127.0.0.1:10000/api/orders

Press Ctrl-C to stop.
TXT

# A long-lived API token, end to end: created with the CLI, accepted on /api/ from the
# filter's replica (no call to the control plane per request), revoked.
api_token_demo() {
  local cli="$BIN/portcullis" created token id status
  export PORTCULLIS_ADMIN_TOKEN_FILE=$RUN/admin-token
  created=$("$cli" api-tokens create --user ci-bot --name "demo deploy" --scope deploy --expires-in 1h --json)
  token=$(printf '%s' "$created" | sed -n 's/.*"token": *"\([^"]*\)".*/\1/p')
  id=$(printf '%s' "$created" | sed -n 's/.*"id": *"\([^"]*\)".*/\1/p')
  echo "API token: created $id for ci-bot (portcullis api-tokens create ...; the secret is shown once)"
  for _ in $(seq 1 50); do
    status=$(curl -s -o /dev/null -w '%{http_code}' -H "x-api-key: $token" http://127.0.0.1:10000/api/orders)
    [ "$status" = 200 ] && break
    sleep 0.1
  done
  echo "API token: GET /api/orders with x-api-key -> $status"
  "$cli" api-tokens revoke "$id" >/dev/null
  echo "API token: revoked $id (portcullis api-tokens revoke $id)"
  local www=""
  for _ in $(seq 1 50); do
    www=$(curl -s -o /dev/null -D - -H "x-api-key: $token" http://127.0.0.1:10000/api/orders | tr -d '\r' | grep -i '^www-authenticate:' || true)
    case "$www" in *revoked*) break ;; esac
    sleep 0.1
  done
  echo "API token: GET /api/orders after revoke -> 401 ${www#*: }"
}
api_token_demo || echo "API token demo failed; see .run/logs/" >&2

wait -n "${pids[@]}" || true
echo "a component exited; see .run/logs/" >&2
