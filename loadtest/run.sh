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
. ./setup.sh
DLR="${DLR_DELAY_MS:-1}"
trap 'kill ${SIM_PID:-} ${GW:-} 2>/dev/null || true; wait 2>/dev/null || true' EXIT
# shellcheck disable=SC2086 # SIM_ARGS holds several flags
start_sim 0 --dlr-delay-ms "$DLR" ${SIM_ARGS:-}
start_gateway
for _ in $(seq 100); do curl -skf "$API/readyz" >/dev/null && break; sleep 0.1; done
$LT --url "$API" --ca work/api.crt --key "$KEY" \
  --sim-control "http://127.0.0.1:$SIM_CTL" --metrics "$METRICS" "${@:---duration 10}"
