#!/usr/bin/env bash
# A checkpoint holds exactly the generated weights:
#   checkpoint_roundtrip.sh MOEPROXY MPIEXEC RANKS DECK OUTDIR [--set k=v ...]
# Exports DECK's generated weights, runs DECK on RANKS ranks with the overrides once from the
# generated weights and once from the checkpoint, and requires both to PASS and their final
# hidden states to be identical bit for bit (every rank reads its shard by hyperslab).
set -euo pipefail
exe=$1 mpiexec=$2 ranks=$3 deck=$4 outdir=$5
shift 5
name=ckpt-$(basename "$deck" .toml)-np$ranks-$(echo "$*" | tr -c 'a-zA-Z0-9=' '_' | tr -s '_')
mkdir -p "$outdir"
weights=$outdir/$name.weights.h5 generated=$outdir/$name.generated.h5 loaded=$outdir/$name.loaded.h5
rm -f "$weights" "$generated" "$loaded"

"$exe" export-checkpoint "$deck" --out "$weights" > "$outdir/$name.export.log" 2>&1 \
  || { cat "$outdir/$name.export.log"; echo "FAIL: export-checkpoint failed"; exit 1; }
for run in generated loaded; do
  file=$generated extra=()
  [ "$run" = loaded ] && file=$loaded extra=(--set model.checkpoint="$weights")
  "$mpiexec" -n "$ranks" "$exe" run "$deck" "$@" "${extra[@]}" --set output.file="$file" \
    --set output.dump_hidden=true > "$outdir/$name.$run.log" 2>&1 \
    || { cat "$outdir/$name.$run.log"; echo "FAIL: the run from $run weights failed"; exit 1; }
  grep -qx PASS "$outdir/$name.$run.log" || { cat "$outdir/$name.$run.log"; echo "FAIL: $run run did not PASS"; exit 1; }
done
grep -q "weights: checkpoint $weights" "$outdir/$name.loaded.log" || { echo "FAIL: the run did not say it loaded $weights"; exit 1; }

/usr/bin/python3 - "$generated" "$loaded" <<'PY'
import sys
import h5py
import numpy as np

with h5py.File(sys.argv[1], "r") as a, h5py.File(sys.argv[2], "r") as b:
    for name in ("hidden_prefill", "hidden_decode"):
        x, y = a["output"][name][...], b["output"][name][...]
        assert x.shape == y.shape, f"{name}: shapes {x.shape} vs {y.shape}"
        differ = int(np.count_nonzero(x.view(np.uint32) != y.view(np.uint32)))
        print(f"{name} {x.shape}: {differ} values differ between generated and checkpoint weights")
        if differ:
            sys.exit(f"FAIL: {name} from the checkpoint is not bit-identical to the generated run")
print("checkpoint run == generated run, bit for bit")
PY
