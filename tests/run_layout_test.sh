#!/usr/bin/env bash
# A layout against the single-rank run of the same deck:
#   run_layout_test.sh MOEPROXY MPIEXEC RANKS DECK OUTDIR [--set k=v ...] [--serial-set k=v ...]
# Runs DECK on 1 rank and on RANKS ranks with the given overrides, both dumping their final
# hidden states, requires both to PASS their own verification and the two dumps to agree
# (max |a - b| / max |b|, prefill and decode) within 1e-4 for fp32 and 1e-3 for fp16: a
# layout that splits a sum (tensor parallelism, head x dim slicing) adds the same fp32
# partials in another order, which now and then moves an activation to the other
# neighbouring binary16 value, a change of one binary16 ulp (4.9e-4 relative) in that element;
# measured up to 1.9e-4 (docs/model.md, Precision).
# With a capacity factor (model.capacity_factor > 0) the dropped tokens depend on the rows
# routed together (parallel/route_groups.hpp): --serial-set parallel.micro_batches=G gives the
# single-rank run the layout's G groups of whole sequences, both runs must drop the same
# number of tokens, and some.
set -euo pipefail
exe=$1 mpiexec=$2 ranks=$3 deck=$4 outdir=$5
shift 5
name=$(basename "$deck" .toml)-np$ranks-$(echo "$*" | tr -c 'a-zA-Z0-9=' '_' | tr -s '_')
mkdir -p "$outdir"
serial=$outdir/$name.serial.h5
# Overrides of the model and workload (model.precision, workload.routing, ...) describe what
# both runs compute.
model=()
args=()
capacity=0
while [ $# -gt 0 ]; do
  case $1 in
    --serial-set) model+=(--set "$2"); shift 2 ;;
    --set) args+=(--set "$2"); [[ $2 == model.* || $2 == workload.* ]] && model+=(--set "$2")
           [[ $2 == model.capacity_factor=* ]] && capacity=${2#model.capacity_factor=}
           shift 2 ;;
    *) args+=("$1"); shift ;;
  esac
done
set -- "${args[@]}"
precision=fp32
grep -qE '^precision *= *"fp16"' "$deck" && precision=fp16
for o in "${model[@]}"; do [[ $o == model.precision=* ]] && precision=${o#model.precision=}; done
tolerance=1e-4
[ "$precision" = fp16 ] && tolerance=1e-3
# int8 transfers (parallel.comm_compression): the parallel run against the uncompressed
# single-rank run, within the int8 tolerance the run states in /summary/compression_tolerance
# (core/src/reference.cpp says how it is chosen), and it must have sent fewer bytes than
# uncompressed.
compressed=0
for ((i = 0; i + 1 < ${#args[@]}; ++i)); do
  [ "${args[i]}" = --set ] && [ "${args[i + 1]}" = parallel.comm_compression=int8 ] && compressed=1
done
parallel=$outdir/$name.h5
rm -f "$serial" "$parallel"

"$mpiexec" -n 1 "$exe" run "$deck" "${model[@]}" --set output.file="$serial" --set output.dump_hidden=true > "$outdir/$name.serial.log" 2>&1 \
  || { cat "$outdir/$name.serial.log"; echo "FAIL: the single-rank run failed"; exit 1; }
"$mpiexec" -n "$ranks" "$exe" run "$deck" "$@" --set output.file="$parallel" --set output.dump_hidden=true \
  > "$outdir/$name.log" 2>&1 || { cat "$outdir/$name.log"; echo "FAIL: the $ranks-rank run failed"; exit 1; }
cat "$outdir/$name.log"
grep -qx PASS "$outdir/$name.log" || { echo "FAIL: the $ranks-rank run did not PASS its verification"; exit 1; }

/usr/bin/python3 - "$serial" "$parallel" "$ranks" "$tolerance" "$compressed" "$capacity" <<'PY'
import sys
import h5py
import numpy as np

serial, parallel, ranks, tolerance = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
compressed = sys.argv[5] == "1"
capacity = float(sys.argv[6])
with h5py.File(serial, "r") as a, h5py.File(parallel, "r") as b:
    assert bool(a.attrs["complete"]) and bool(b.attrs["complete"]), "a result file is not complete"
    assert int(b.attrs["mpi_size"]) == ranks, f"expected {ranks} ranks, file says {b.attrs['mpi_size']}"
    if capacity > 0:
        dropped = [int(f["summary"].attrs["dropped_tokens"]) for f in (a, b)]
        print(f"dropped tokens: {dropped[0]} on 1 rank, {dropped[1]} on {ranks}")
        assert dropped[0] > 0, "capacity_factor dropped no token: the test checks nothing"
        assert dropped[0] == dropped[1], "the runs grouped the tokens differently"
    worst = 0.0
    for name in ("hidden_prefill", "hidden_decode"):
        ref = a["output"][name][...].astype(np.float64)
        got = b["output"][name][...].astype(np.float64)
        assert ref.shape == got.shape, f"{name}: shapes {ref.shape} vs {got.shape}"
        assert np.abs(ref).max() > 0 and np.abs(got).max() > 0, f"{name}: all zeros: a run kept no outputs"
        err = np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-30)
        print(f"{name} {ref.shape}: max relative error vs 1 rank = {err:.3e}")
        worst = max(worst, err)
    if compressed:
        compression_tolerance = float(b["summary"].attrs["compression_tolerance"])
        assert compression_tolerance > 0, "an int8 run states no compression tolerance"
        tolerance += compression_tolerance
        print(f"int8: tolerance {tolerance:g} including the compression's {compression_tolerance:g}")
        saved = int(b["summary"].attrs["comm_bytes_saved"])
        sent, uncompressed = int(b["comm"]["bytes"][...].sum()), int(b["comm"]["uncompressed_bytes"][...].sum())
        print(f"int8: {sent} bytes sent, {uncompressed} uncompressed, {saved} saved")
        assert saved > 0, "int8 run saved no bytes"
        assert uncompressed - sent == saved, f"/comm saves {uncompressed - sent} bytes, the summary {saved}"
    if not worst <= tolerance:
        sys.exit(f"FAIL: {ranks}-rank hidden states differ from the single-rank run by {worst:.3e} > {tolerance:g}")
print("layout matches the single-rank run")

# Hidden and exposed communication (docs/hdf5-schema.md): non-negative, the exposed part
# within the total, the per-rank figures adding up to the summary's, the /comm table's
# hidden seconds adding up to each rank's.
with h5py.File(parallel, "r") as b:
    # Each decode step's wall: the steps make up the decode.
    steps, walls = b["timing/decode_step_wall"][()], b["timing/decode_wall"][()]
    assert steps.shape[0] == ranks and steps.shape[1] > 0 and (steps > 0).all(), f"decode_step_wall {steps}"
    assert np.allclose(steps.sum(axis=1), walls, rtol=1e-9, atol=1e-12), f"decode steps {steps.sum(axis=1)} vs walls {walls}"
    s = b["summary"].attrs
    exposed, hidden = b["timing/comm_exposed"][()], b["timing/comm_hidden"][()]
    comm_hidden = b["comm/hidden"][()]
    assert exposed.shape == hidden.shape == (ranks,), f"comm_exposed/hidden shapes {exposed.shape} {hidden.shape}"
    assert (exposed >= 0).all() and (hidden >= 0).all() and (comm_hidden >= 0).all(), "negative communication time"
    total = s["comm_seconds_raw"]
    assert 0 <= s["comm_exposed_s"] <= total * (1 + 1e-12) and s["comm_hidden_s"] >= 0, \
        f"summary exposed {s['comm_exposed_s']} hidden {s['comm_hidden_s']} total {total}"
    assert np.isclose(total, s["comm_exposed_s"] + s["comm_hidden_s"], rtol=1e-9, atol=1e-12)
    assert np.isclose(exposed.sum(), s["comm_exposed_s"], rtol=1e-9, atol=1e-12), "exposed: ranks vs summary"
    assert np.isclose(hidden.sum(), s["comm_hidden_s"], rtol=1e-9, atol=1e-12), "hidden: ranks vs summary"
    assert np.allclose(comm_hidden.sum(axis=1), hidden, rtol=1e-9, atol=1e-12), "hidden: /comm vs /timing"
    keys = list(b["comm/keys"].asstr()[()])
    chunked = "ep_chunks=" in b.attrs["layout"]
    if chunked:
        assert "ialltoallv@ep" in keys and "alltoallv@ep" not in keys, f"chunked expert parallelism used {keys}"
        calls = b["comm/calls"][()][:, keys.index("ialltoallv@ep")]
        assert (calls > 0).all(), f"ialltoallv@ep calls per rank {calls}"
    print(f"communication: {s['comm_exposed_s']:.3e} s exposed, {s['comm_hidden_s']:.3e} s hidden behind compute")

# The buffers rows travel between ranks in (memory kind comm_buffers): none on one rank; some
# wherever an expert group, pipeline stages or the two sides of a separated layout exchange rows.
with h5py.File(serial, "r") as a, h5py.File(parallel, "r") as b:
    def comm_buffers(f):
        return f["memory/bytes"][()][:, list(f["memory/kinds"].asstr()[()]).index("comm_buffers")]
    assert (comm_buffers(a) == 0).all(), f"the single-rank run keeps comm buffers: {comm_buffers(a)}"
    layout = dict(kv.split("=", 1) for kv in b.attrs["layout"].split() if "=" in kv)
    travels = int(layout.get("ep", 1)) > 1 or int(layout.get("pp", 1)) > 1 or "attn_ranks" in layout
    if travels:
        assert comm_buffers(b).sum() > 0, f"rows travel in {b.attrs['layout']} but no rank reports comm buffers"
    print(f"comm buffers per rank: {comm_buffers(b).tolist()} bytes")
PY
