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
