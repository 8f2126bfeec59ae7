# Sourced by run.sh and queued.sh (from loadtest/): binaries, a fresh work/ directory with
# certificates and data keys, the run's configuration work/gateway.toml, and an API key in $KEY.
# PROFILE=debug uses the debug build (CI's smoke run); figures come from release only.
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
# The configuration lives in work/, so its relative paths lose their "work/" prefix.
sed -e 's#"work/#"#' -e "s#^cache_mb = 128#cache_mb = ${CACHE_MB:-128}#" -e "s#^binds = 4#binds = ${BINDS:-4}#" \
  perf.toml > work/gateway.toml
[ -z "${CARRIER_EXTRA:-}" ] || printf '%s\n' "$CARRIER_EXTRA" >> work/gateway.toml
KEY=$($BIN keys create --name perf --scopes send,read --config work/gateway.toml | awk '/^token:/ {print $2}')

# The first line a process wrote to FILE (its JSON "listening" line), waiting up to 30 s.
first_line() {
  for _ in $(seq 300); do [ -s "$1" ] && head -1 "$1" | grep -q '}' && { head -1 "$1"; return 0; }; sleep 0.1; done
  echo "no startup line in $1" >&2; return 1
}
json() { python3 -c 'import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$1" "$2"; }

# start_sim [TLS_PORT] [extra flags…]: the simulator (SIM=builtin|node) on free ports, or on
# TLS_PORT when given (a carrier coming back); sets SIM_PID, SIM_TLS, SIM_CTL and points the
# gateway config at it.
start_sim() {
  local tls_port="${1:-0}"; shift || true
  : > work/sim.out
  if [ "${SIM:-builtin}" = node ]; then
    SIM_DIR="${SMSC_SIM_DIR:-$(pwd)/../../shared/tools/smsc-sim}"
    [ -d "$SIM_DIR/node_modules" ] || (cd "$SIM_DIR" && npm ci --no-audit --no-fund --loglevel=error)
    node "$SIM_DIR/sim.js" --port 0 --control-port 0 --tls-port "$tls_port" --cert work/smsc.crt --key work/smsc.key \
      "$@" > work/sim.out 2> work/sim.err &
  else
    $BIN smsc-sim --port 0 --control-port 0 --tls-port "$tls_port" --cert work/smsc.crt --key work/smsc.key \
      "$@" > work/sim.out 2> work/sim.err &
  fi
  SIM_PID=$!
  local line; line=$(first_line work/sim.out)
  SIM_TLS=$(json "$line" tls_port); SIM_CTL=$(json "$line" control_port)
  sed -i "s/^port = [0-9]*/port = $SIM_TLS/" work/gateway.toml
}

# start_gateway: smsgate serve on free ports; sets GW, API (https://127.0.0.1:PORT), METRICS.
start_gateway() {
  : > work/gateway.out
  $BIN serve --config work/gateway.toml > work/gateway.out 2>> work/gateway.log &
  GW=$!
  local line; line=$(first_line work/gateway.out)
  API="https://$(json "$line" api)"; METRICS="http://$(json "$line" metrics)/metrics"
}
