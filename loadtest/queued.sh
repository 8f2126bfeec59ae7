#!/usr/bin/env bash
# The "1,000,000 queued behind a stopped carrier" run: smsgate with its carrier down takes
# COUNT messages through the batch endpoint; then RSS is read, smsgate is restarted (SIGTERM,
# start) with the simulator back up, the time from exec to /readyz 200 is taken, and the drain
# to the simulator is timed.   loadtest/queued.sh            (COUNT=1000000 by default)
set -euo pipefail
cd "$(dirname "$0")"
COUNT="${COUNT:-1000000}"
KEEP=0
. ./setup.sh
trap 'kill ${SIM_PID:-} ${GW:-} 2>/dev/null || true; wait 2>/dev/null || true' EXIT
rss() { awk '/^VmRSS/ {printf "%.0f", $2/1024}' /proc/$1/status; }
now() { date +%s.%N; }

# A port for the carrier: the simulator starts once to find a free one, and stops (the
# carrier is down); it comes back on the same port in step 2.
start_sim 0 --dlr-delay-ms 1
CARRIER_PORT=$SIM_TLS
kill $SIM_PID; wait $SIM_PID 2>/dev/null || true; SIM_PID=

echo "== 1. carrier down, $COUNT messages in through POST /v1/messages/batch"
start_gateway
for _ in $(seq 100); do curl -sk -o /dev/null "$API/healthz" && break; sleep 0.1; done
$LT --url "$API" --ca work/api.crt --key "$KEY" --connections 8 --batch 100 \
  --count "$COUNT" --duration 600 --metrics "$METRICS"
queued=$(curl -sk "$API/readyz" | grep -o '"queued":[0-9]*' | cut -d: -f2)
echo "queued (readyz): $queued"
echo "RSS with $COUNT queued: $(rss $GW) MB; store on disk: $(du -sm work/data | cut -f1) MB"

# LOAD_ONLY=1: stop here and leave the queued store in work/ (for looking at it offline).
if [ "${LOAD_ONLY:-0}" = 1 ]; then kill -TERM $GW; wait $GW || true; exit 0; fi

echo "== 2. restart with the carrier back"
t0=$(now); kill -TERM $GW; wait $GW || true; t1=$(now)
echo "stop took $(echo "$t1 - $t0" | bc) s"
start_sim "$CARRIER_PORT" --dlr-delay-ms 1
t0=$(now)
start_gateway
until curl -sk -o /dev/null -w '%{http_code}' "$API/readyz" 2>/dev/null | grep -q 200; do sleep 0.05; done
t1=$(now)
echo "restart to ready: $(echo "$t1 - $t0" | bc) s (RSS $(rss $GW) MB)"

echo "== 3. drain"
t0=$(now); max_rss=0; last=0
while :; do
  sent=$(curl -s "http://127.0.0.1:$SIM_CTL/stats" | grep -o '"submit_sm_ok":[0-9]*' | cut -d: -f2)
  r=$(rss $GW); [ "$r" -gt "$max_rss" ] && max_rss=$r
  [ "$sent" -ge "$COUNT" ] && break
  t=$(now)
  if [ "$(echo "$t - $t0 > 900" | bc)" = 1 ]; then echo "drain incomplete after 900 s: $sent" >&2; exit 1; fi
  sleep 1
done
t1=$(now)
secs=$(echo "$t1 - $t0" | bc)
echo "drained $sent submit_sm in $secs s = $(echo "$sent / $secs" | bc) /s; max RSS while draining $max_rss MB"
sleep 2
echo "receipts acknowledged: $(curl -s "http://127.0.0.1:$SIM_CTL/stats" | grep -o '"dlr_resp_ok":[0-9]*' | cut -d: -f2)"
