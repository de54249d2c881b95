#!/usr/bin/env bash
# A separated layout with balancing on, against the single-rank run (run_layout_test.sh):
#   balance_test.sh MOEPROXY MPIEXEC RANKS DECK OUTDIR MACHINE [--set k=v ...]
# The overrides must switch balancing on; MACHINE is the machine file of the suggested split
# (copied into OUTDIR and named relative to it, so that the run's file names stay short).
# Besides matching the single-rank run and passing verification, the results file must hold
# /balance: a check every interval of decode steps with both sides' busy times, at least one
# re-split trial, and a suggested rank split.
set -euo pipefail
exe=$1 mpiexec=$2 ranks=$3 deck=$4 outdir=$5 machine=$6
shift 6
mkdir -p "$outdir"
cp "$machine" "$outdir/"
cd "$outdir"
set -- "$@" --set parallel.balance_machine="$(basename "$machine")"
bash "$(dirname "$0")/run_layout_test.sh" "$exe" "$mpiexec" "$ranks" "$deck" "$outdir" "$@"
name=$(basename "$deck" .toml)-np$ranks-$(echo "$*" | tr -c 'a-zA-Z0-9=' '_' | tr -s '_')
grep -q "^BALANCE checks=" "$outdir/$name.log" || { echo "FAIL: no BALANCE line in the report"; exit 1; }
/usr/bin/python3 - "$outdir/$name.h5" <<'PY'
import sys
import h5py
import numpy as np

with h5py.File(sys.argv[1], "r") as f:
    assert "balance" in f, "no /balance group"
    b = f["balance"]
    steps = int(f["output"]["hidden_decode"].shape[1])
    interval = int(b.attrs["interval"])
    checks, trials = b["checks"], b["trials"]
    n = checks["step"].shape[0]
    assert n == steps // interval, f"{n} checks for {steps} decode steps every {interval}"
    assert list(checks["step"][...]) == [interval * (i + 1) for i in range(n)], "checks not every interval"
    assert (checks["attention_busy"][...] > 0).all() and (checks["ffn_busy"][...] > 0).all(), "a side never busy"
    imb = checks["imbalance"][...]
    assert ((imb >= 0) & (imb < 1)).all(), f"imbalance out of [0, 1): {imb}"
    busy = np.stack([checks["attention_busy"][...], checks["ffn_busy"][...]])
    assert np.allclose(imb, (busy.max(0) - busy.min(0)) / busy.max(0)), "imbalance is not (busier - idler) / busier"
    actions = [a.decode() for a in checks["action"][...]]
    assert trials["step"].shape[0] >= 1, f"no re-split tried although the threshold is {b.attrs['threshold']}"
    verdicts = [v.decode() for v in trials["verdict"][...]]
    # Every trial but one still running at the end is judged at the next check.
    assert all(v in ("kept", "reverted") for v in verdicts[:-1]) and verdicts[-1] in ("kept", "reverted", "unjudged")
    assert int(b.attrs["suggested_attn_ranks"]) > 0, f"no suggested split: {b.attrs['note']}"
    assert float(b.attrs["suggested_tpot_s"]) > 0 and float(b.attrs["current_tpot_s"]) > 0
    print("balance checks:", list(zip(checks["micro_batches"][...], np.round(imb, 3), actions)))
    print("trials:", verdicts, "suggested attn_ranks:", int(b.attrs["suggested_attn_ranks"]))
print("balancing recorded")
PY
# The analysis report shows the same records.
report=$outdir/$name.report
"$(dirname "$0")/../analysis/moeproxy-report" "$outdir/$name.h5" --out "$report" --no-plots > /dev/null
grep -q "^Balancing (threshold" "$report/summary.md" && grep -q "suggested split (performance model" "$report/summary.md" \
  || { echo "FAIL: moeproxy-report shows no balancing"; exit 1; }
