#!/bin/sh
# The `cloud` container: a Ray head node running the edgeroute Serve app from a Serve config.
# Ray's own processes stay in the foreground (`ray start --block`); the app is deployed onto
# the head with `serve run --non-blocking` (works with the dashboard off). SIGTERM stops Ray.
# Ray's token authentication comes from the environment: RAY_AUTH_MODE=token and the token
# in RAY_AUTH_TOKEN_PATH (docker-compose mounts secrets/ray-token there; `make secrets`).
set -eu
if [ "${RAY_AUTH_MODE:-}" != "token" ]; then
    echo "refusing to start: set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN_PATH (see docker-compose.yml)" >&2
    exit 2
fi
RAY_PORT="${RAY_PORT:-6379}"
SERVE_CONFIG="${SERVE_CONFIG:-cloud_service/serve_config.yaml}"
ray start --head --port="$RAY_PORT" --include-dashboard=false --disable-usage-stats \
    --metrics-export-port="${RAY_METRICS_PORT:-8080}" --num-cpus="${RAY_NUM_CPUS:-2}" --block &
RAY_PID=$!
trap 'kill -TERM "$RAY_PID"; wait "$RAY_PID"; exit 0' TERM INT
until ray status --address "127.0.0.1:$RAY_PORT" >/dev/null 2>&1; do sleep 1; done
serve run --address "127.0.0.1:$RAY_PORT" --non-blocking "$SERVE_CONFIG"
wait "$RAY_PID"
