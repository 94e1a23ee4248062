#!/usr/bin/env bash
# Runs schemathesis against a live gateway: every response must match openapi.yaml and none
# may be a 5xx. `positive_data_acceptance` is excluded: page tokens are opaque (any string the
# gateway did not issue is a 400 by design) and JSON Schema cannot express every name rule.
# Two runs: the /human API with a management token, the key-managed /v0 API with an API key.
# Usage: .ci/schemathesis.sh path/to/agentry-gateway
set -euo pipefail
bin=$1
dir=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$dir"' EXIT
token="agm_schemathesis_$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
hash=$(printf %s "$token" | sha256sum | cut -d' ' -f1)
port=18931; mport=18932
cat > "$dir/gateway.toml" <<TOML
[server]
listen = "127.0.0.1:$port"
grace_period_seconds = 1
pid_file = "$dir/gw.pid"
upgrade_sock = "$dir/gw.sock"
[metrics]
listen = "127.0.0.1:$mport"
[store]
kind = "sqlite"
path = "$dir/gateway.db"
[limits]
failed_auth_per_ip = 0
[logging]
access_log = false
[[management.tokens]]
name = "schemathesis"
sha256 = "$hash"
scope = "all"
[inbox_directory]
source = "none"
TOML
"$bin" run --config "$dir/gateway.toml" > "$dir/gateway.log" 2>&1 &
pid=$!
for _ in $(seq 1 100); do
  curl -fs "http://127.0.0.1:$mport/readyz" >/dev/null && break
  sleep 0.1
done
# One run over the paths matching $1, with the bearer credential $2.
run_schemathesis() {
  schemathesis run openapi.yaml \
    --url "http://127.0.0.1:$port" \
    --include-path-regex "$1" \
    -H "Authorization: Bearer $2" \
    --checks all \
    --exclude-checks positive_data_acceptance \
    --max-examples 40 \
    --workers 1 \
    --seed 1 \
    --suppress-health-check all \
    --no-color
}
# The /human API with a management token.
run_schemathesis '^/human/' "$token"
# The key-managed /v0 API with an API key that may manage keys.
key=$(curl -fs -H "Authorization: Bearer $token" -H 'content-type: application/json' \
  -d '{"name":"schemathesis","permissions":{"api_key_read":true,"api_key_create":true,"api_key_update":true,"api_key_delete":true}}' \
  "http://127.0.0.1:$port/human/v0/inboxes/schemathesis@example.com/api-keys" |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["api_key"])')
run_schemathesis '^/v0/' "$key"
if grep -E "panicked|ERROR" "$dir/gateway.log"; then
  echo "the gateway logged errors during the run" >&2
  exit 1
fi
