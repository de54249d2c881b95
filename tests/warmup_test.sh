#!/usr/bin/env bash
# Warm-up passes must leave no trace in a run's results but their count:
#   warmup_test.sh MOEPROXY MPIEXEC RANKS DECK OUTDIR [--set k=v ...]
# Runs DECK with workload.warmup = 0 and = 2 and requires the final hidden states to be
# identical bit for bit (the timed passes rewrite every cache position and output the
# warm-up wrote), the same communication calls and bytes per operation of the layers'
# groups and the same expert token counts (the warm-up's are not counted), and `warmup`
# recorded as 0 and 2.
set -euo pipefail
exe=$1 mpiexec=$2 ranks=$3 deck=$4 outdir=$5
shift 5
name=warmup-$(basename "$deck" .toml)-np$ranks-$(echo "$*" | tr -c 'a-zA-Z0-9=' '_' | tr -s '_')
mkdir -p "$outdir"
for warmup in 0 2; do
  file=$outdir/$name.$warmup.h5
  rm -f "$file"
  "$mpiexec" -n "$ranks" "$exe" run "$deck" "$@" --set workload.warmup=$warmup --set output.file="$file" \
    --set output.dump_hidden=true > "$outdir/$name.$warmup.log" 2>&1 \
    || { cat "$outdir/$name.$warmup.log"; echo "FAIL: the run with warmup = $warmup failed"; exit 1; }
done
grep -q "warm-up: 2 passes" "$outdir/$name.2.log" || { cat "$outdir/$name.2.log"; echo "FAIL: no warm-up progress line"; exit 1; }

/usr/bin/python3 - "$outdir/$name".{0,2}.h5 <<'PY'
import sys
import h5py
import numpy as np

with h5py.File(sys.argv[1], "r") as cold, h5py.File(sys.argv[2], "r") as warm:
    for f, expected in ((cold, 0), (warm, 2)):
        if int(f.attrs["warmup"]) != expected:
            sys.exit(f"FAIL: warmup attribute {f.attrs['warmup']}, expected {expected}")
    for name in ("hidden_prefill", "hidden_decode"):
        x, y = (f["output"][name][...] for f in (cold, warm))
        if x.shape != y.shape or np.count_nonzero(x.view(np.uint32) != y.view(np.uint32)):
            sys.exit(f"FAIL: {name} differs after warm-up passes")
    # The layers' groups; the control plane (@world) adds the barrier before the warm-up.
    def layers(f, name):
        keep = [not k.endswith(b"@world") for k in f["comm"]["keys"][...]]
        return f["comm"][name][...][..., keep]
    for name in ("keys", "calls", "bytes"):
        x, y = layers(cold, name), layers(warm, name)
        if x.shape != y.shape or not np.array_equal(x, y):
            sys.exit(f"FAIL: comm/{name} differs after warm-up passes:\n{x}\n{y}")
    if "experts" in cold and not np.array_equal(cold["experts"]["tokens"][...], warm["experts"]["tokens"][...]):
        sys.exit("FAIL: experts/tokens differ after warm-up passes")
    print(f"warm-up leaves outputs, {int(layers(cold, 'calls').sum())} communication calls and the expert counts as they were")
PY
