"""CI smoke check of a `smsgate-loadtest --json` report: the tools work end to end.
Figures are not judged here; they come from the runs in docs/performance.md."""
import json
import sys

r = json.load(sys.stdin)
assert r["accepted"] > 0 and not r["errors"], r
carrier = r["carrier"]
assert carrier["submit_sm_ok"] == r["accepted"] == carrier["receipts_acked"], carrier
assert r["gateway"]["cpu_us_per_accepted_message"] > 0, r["gateway"]
print(f"loadtest smoke: {r['accepted']} accepted, submitted and receipted")
