#!/usr/bin/env bash
# A failover drill against the single-rank run (docs/reliability.md):
#   failover_test.sh MOEPROXY MPIEXEC RANKS DECK OUTDIR [--set k=v ...]
# run_layout_test.sh runs DECK with the [faults] overrides: the drill must PASS its own
# verification and every sequence's hidden states, those taken over included, must match
# the single-rank run. Then the results file must hold the /failover record: which rank
# failed and which took over, and a recovery time and decode throughputs that are present
# and positive (the throughput before the failure only when there was a step before it),
# and the console report and analysis/moeproxy-report must state it as a drill.
set -euo pipefail
exe=$1 mpiexec=$2 ranks=$3 deck=$4 outdir=$5
shift 5
rm -rf "$outdir"
bash "$(dirname "$0")/run_layout_test.sh" "$exe" "$mpiexec" "$ranks" "$deck" "$outdir" "$@"
parallel=$(ls "$outdir"/*.h5 | grep -v '\.serial\.h5$')
grep -q "^FAILOVER fail_rank=.* takeover_rank=.* recovery_s=.*drill inside a healthy MPI job" "$outdir"/*-np"$ranks"-*.log \
  || { echo "FAIL: the console report has no FAILOVER line"; exit 1; }
/usr/bin/python3 - "$parallel" "$@" <<'PY'
import sys
import h5py

path, args = sys.argv[1], sys.argv[2:]
sets = dict(a.split("=", 1) for a in args if "=" in a and a != "--set")
with h5py.File(path, "r") as f:
    assert "failover" in f, f"{path} has no /failover group"
    a = f["failover"].attrs
    for name in ("kind", "fail_rank", "fail_step", "takeover_rank", "sequences", "recovery_s",
                 "decode_tokens_per_s_before", "decode_tokens_per_s_after"):
        assert name in a, f"/failover has no attribute {name}"
    assert "not killed" in str(a["kind"]), a["kind"]
    assert int(a["fail_rank"]) == int(sets["faults.fail_rank"]), (a["fail_rank"], sets)
    assert int(a["fail_step"]) == int(sets["faults.fail_step"]), (a["fail_step"], sets)
    assert int(a["takeover_rank"]) >= 0 and int(a["takeover_rank"]) != int(a["fail_rank"]), a["takeover_rank"]
    assert int(a["sequences"]) > 0, a["sequences"]
    assert float(a["recovery_s"]) > 0.0, a["recovery_s"]
    assert float(a["decode_tokens_per_s_after"]) > 0.0, a["decode_tokens_per_s_after"]
    if int(a["fail_step"]) > 0:
        assert float(a["decode_tokens_per_s_before"]) > 0.0, a["decode_tokens_per_s_before"]
    print(f"/failover: rank {a['fail_rank']} failed before decode step {a['fail_step']}, rank "
          f"{a['takeover_rank']} took over {a['sequences']} sequences in {float(a['recovery_s']):.3e} s")
PY
# The analysis report states the drill for what it was.
/usr/bin/python3 "$(dirname "$0")/../analysis/moeproxy-report" "$parallel" --out "$outdir/report" > /dev/null
grep -q "failover drill: rank .* took over .*recovery" "$outdir/report/summary.md" \
  && grep -q "drill inside a healthy MPI job: the failed rank's process was not killed" "$outdir/report/summary.md" \
  || { echo "FAIL: moeproxy-report does not state the failover drill"; exit 1; }
echo "failover drill PASSED and recorded"
