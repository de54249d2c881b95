#!/usr/bin/env bash
# Decode soak: soak_test.sh MOEPROXY MPIEXEC OUTDIR
# Runs one small MoE deck on 2 ranks for 100 and for 1000 decode steps, requires both to pass
# verification against the fp64 reference (no drift over a long decode) and compares each
# rank's high-water memory (/memory/bytes, kind "high_water": peak RSS, taken before the
# verification) between the two runs.
#
# Some growth is legitimate: the KV cache and the host copies of the outputs are sized for
# prompt + decode_steps positions up front. The runs report their own weights, KV cache and
# activations, and the host result buffers are sequences x steps x hidden floats, so the
# expected growth is known; what exceeds it is what the decode loop kept. The margin is
# 1 MiB plus 5% of the expected growth: peak RSS of identical runs differs by up to ~0.4 MiB
# (allocator and MPI start-up), while a decode loop that keeps even one [sequences, hidden]
# buffer per step (4 KiB here) would add 3.5 MiB over the 900 extra steps.
set -euo pipefail
exe=$1 mpiexec=$2 outdir=$3
# AddressSanitizer keeps freed memory in quarantine (256 MiB) to catch use after free, so
# peak RSS grows with every allocation the run ever freed: the measure means nothing there.
if ldd "$exe" 2> /dev/null | grep -q libasan; then
  echo "SKIPPED: $exe is built with AddressSanitizer, whose quarantine makes peak RSS grow by design"
  exit 77
fi
mkdir -p "$outdir"
deck=$outdir/soak.toml
cat > "$deck" <<'EOF'
[model]
layers = 2
hidden = 128
heads = 4
kv_heads = 2
ffn = "moe"
ffn_hidden = 64
experts = 4
top_k = 2

[workload]
batch = 16
prompt = 16

[parallel]
dp = 2

[verify]
mode = "reference"
EOF

for steps in 100 1000; do
  rm -f "$outdir/soak-$steps.h5"
  "$mpiexec" -n 2 "$exe" run "$deck" --set workload.decode_steps=$steps \
    --set output.file="$outdir/soak-$steps.h5" > "$outdir/soak-$steps.log" 2>&1 \
    || { cat "$outdir/soak-$steps.log"; echo "FAIL: the $steps-step run failed"; exit 1; }
  grep -qx PASS "$outdir/soak-$steps.log" || { cat "$outdir/soak-$steps.log"; echo "FAIL: no verification PASS"; exit 1; }
done

/usr/bin/python3 - "$outdir/soak-100.h5" "$outdir/soak-1000.h5" <<'PY'
import sys
import h5py

MIB = 1 << 20
SEQUENCES_PER_RANK, HIDDEN, FLOAT = 8, 128, 4

def read(path):
    with h5py.File(path, "r") as f:
        assert bool(f.attrs["complete"]), f"{path} is not marked complete"
        kinds = [k.decode() if isinstance(k, bytes) else str(k) for k in f["memory"]["kinds"][...]]
        rows = f["memory"]["bytes"][...].astype(int)
    return [{k: int(v) for k, v in zip(kinds, row)} for row in rows]

short = read(sys.argv[1])
long = read(sys.argv[2])
worst = None
for rank, (a, b) in enumerate(zip(short, long)):
    allocated = sum(b[k] - a[k] for k in ("weights", "kv_cache", "activations"))
    results = SEQUENCES_PER_RANK * (1000 - 100) * HIDDEN * FLOAT
    expected = allocated + results
    grown = b["high_water"] - a["high_water"]
    margin = MIB + expected // 20
    excess = grown - expected
    print(f"rank {rank}: high water {a['high_water'] / MIB:.1f} MiB (100 steps) -> "
          f"{b['high_water'] / MIB:.1f} MiB (1000 steps); expected growth {expected / MIB:.2f} MiB "
          f"(KV cache, activations, weights {allocated / MIB:.2f} + result buffers {results / MIB:.2f}); "
          f"excess {excess / MIB:+.2f} MiB, margin {margin / MIB:.2f} MiB")
    if excess > margin:
        worst = rank
if worst is not None:
    sys.exit(f"FAIL: rank {worst}'s high-water memory grew beyond what 900 more steps allocate")
print("no memory growth beyond the KV cache and result buffers")
PY
