#!/usr/bin/env bash
# A layout against the single-rank run of the same deck:
#   run_layout_test.sh MOEPROXY MPIEXEC RANKS DECK OUTDIR [--set k=v ...]
# Runs DECK on 1 rank and on RANKS ranks with the given overrides, both dumping their final
# hidden states, requires both to PASS their own verification and the two dumps to agree
# within 1e-4 (max |a - b| / max |b|, prefill and decode).
set -euo pipefail
exe=$1 mpiexec=$2 ranks=$3 deck=$4 outdir=$5
shift 5
name=$(basename "$deck" .toml)-np$ranks-$(echo "$*" | tr -c 'a-zA-Z0-9=' '_' | tr -s '_')
mkdir -p "$outdir"
serial=$outdir/$name.serial.h5
parallel=$outdir/$name.h5
rm -f "$serial" "$parallel"

"$mpiexec" -n 1 "$exe" run "$deck" --set output.file="$serial" --set output.dump_hidden=true > "$outdir/$name.serial.log" 2>&1 \
  || { cat "$outdir/$name.serial.log"; echo "FAIL: the single-rank run failed"; exit 1; }
"$mpiexec" -n "$ranks" "$exe" run "$deck" "$@" --set output.file="$parallel" --set output.dump_hidden=true \
  > "$outdir/$name.log" 2>&1 || { cat "$outdir/$name.log"; echo "FAIL: the $ranks-rank run failed"; exit 1; }
cat "$outdir/$name.log"
grep -qx PASS "$outdir/$name.log" || { echo "FAIL: the $ranks-rank run did not PASS its verification"; exit 1; }

/usr/bin/python3 - "$serial" "$parallel" "$ranks" <<'PY'
import sys
import h5py
import numpy as np

serial, parallel, ranks = sys.argv[1], sys.argv[2], int(sys.argv[3])
with h5py.File(serial, "r") as a, h5py.File(parallel, "r") as b:
    assert bool(a.attrs["complete"]) and bool(b.attrs["complete"]), "a result file is not complete"
    assert int(b.attrs["mpi_size"]) == ranks, f"expected {ranks} ranks, file says {b.attrs['mpi_size']}"
    worst = 0.0
    for name in ("hidden_prefill", "hidden_decode"):
        ref = a["output"][name][...].astype(np.float64)
        got = b["output"][name][...].astype(np.float64)
        assert ref.shape == got.shape, f"{name}: shapes {ref.shape} vs {got.shape}"
        err = np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-30)
        print(f"{name} {ref.shape}: max relative error vs 1 rank = {err:.3e}")
        worst = max(worst, err)
    if not worst <= 1e-4:
        sys.exit(f"FAIL: {ranks}-rank hidden states differ from the single-rank run by {worst:.3e} > 1e-4")
print("layout matches the single-rank run")
PY
