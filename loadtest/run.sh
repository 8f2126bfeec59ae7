#!/usr/bin/env bash
# Starts an SMSC simulator and smsgate (release build) with loadtest/perf.toml, creates an API
# key, and runs smsgate-loadtest with the arguments given (or a default closed-loop run).
#   loadtest/run.sh --connections 64 --duration 60
#   loadtest/run.sh --mode open --rate 5000 --duration 30
#   SIM=node BINDS=1 SIM_ARGS="--throttle 1000" loadtest/run.sh --mode open --rate 1200 --duration 30
# Environment: SIM=builtin|node (node = ../shared/tools/smsc-sim, the independent one),
# SIM_ARGS (extra simulator flags), DLR_DELAY_MS (default 1), BINDS (default 4),
# CARRIER_EXTRA (TOML lines appended to the carrier table, e.g. "rate = 1000"), KEEP=1 (reuse
# work/). Everything runs on loopback; state goes to loadtest/work/.
set -euo pipefail
cd "$(dirname "$0")"
# PROFILE=debug runs the debug build (CI's smoke run); figures come from release only.
PROFILE="${PROFILE:-release}"
BIN=../target/$PROFILE/smsgate
LT=../target/$PROFILE/smsgate-loadtest
[ -x "$BIN" ] && [ -x "$LT" ] || (cd .. && cargo build --workspace $([ "$PROFILE" = release ] && echo --release))
[ "${KEEP:-0}" = 1 ] || rm -rf work
mkdir -p work
for n in api smsc; do
  [ -f work/$n.crt ] || openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 -subj "/CN=localhost" \
    -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" -addext "basicConstraints=critical,CA:FALSE" -keyout work/$n.key -out work/$n.crt 2>/dev/null
done
[ -f work/data.keys ] || $BIN keys init-data-keys --out work/data.keys >/dev/null
# The run's configuration lives in work/, so its relative paths lose their "work/" prefix.
sed -e 's#"work/#"#' -e "s#^cache_mb = 128#cache_mb = ${CACHE_MB:-128}#" -e "s#^binds = 4#binds = ${BINDS:-4}#" perf.toml > work/gateway.toml
[ -z "${CARRIER_EXTRA:-}" ] || printf '%s\n' "$CARRIER_EXTRA" >> work/gateway.toml
DLR="${DLR_DELAY_MS:-1}"
if [ "${SIM:-builtin}" = node ]; then
  SIM_DIR="${SMSC_SIM_DIR:-$(pwd)/../../shared/tools/smsc-sim}"
  [ -d "$SIM_DIR/node_modules" ] || (cd "$SIM_DIR" && npm ci --no-audit --no-fund --loglevel=error)
  node "$SIM_DIR/sim.js" --port 0 --control-port 18775 --tls-port 12776 --cert work/smsc.crt --key work/smsc.key \
    --dlr-delay-ms "$DLR" ${SIM_ARGS:-} > work/sim.out 2> work/sim.err &
else
  $BIN smsc-sim --port 0 --control-port 18775 --tls-port 12776 --cert work/smsc.crt --key work/smsc.key \
    --dlr-delay-ms "$DLR" ${SIM_ARGS:-} > work/sim.out 2> work/sim.err &
fi
SIM_PID=$!
trap 'kill $SIM_PID ${GW:-} 2>/dev/null || true; wait 2>/dev/null || true' EXIT
KEY=$($BIN keys create --name perf --scopes send,read --config work/gateway.toml | awk '/^token:/ {print $2}')
$BIN serve --config work/gateway.toml 2> work/gateway.log &
GW=$!
for _ in $(seq 100); do curl -skf https://127.0.0.1:18443/readyz >/dev/null && break; sleep 0.1; done
$LT --url https://127.0.0.1:18443 --ca work/api.crt --key "$KEY" \
  --sim-control http://127.0.0.1:18775 --metrics http://127.0.0.1:19464/metrics "${@:---duration 10}"
