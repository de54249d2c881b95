#!/usr/bin/env bash
# The command line as a user meets it: cli_test.sh CASE MOEPROXY MPIEXEC SOURCE_DIR OUTDIR
# Each case checks the exit code and the words of the message.
set -uo pipefail
case_name=$1 exe=$2 mpiexec=$3 src=$4 out=$5
mkdir -p "$out"
log=$out/$case_name.log
bad=$out/$case_name.toml

source "$(dirname "$0")/expect.sh"

# Bad input must be refused quickly, before any work, and leave no results file (complete or
# not) behind: refuse PATTERN... -- COMMAND... expects exit 2 within $limit seconds.
result=$out/$case_name.h5
limit=20
refuse() {
  local args=()
  while [ "$1" != "--" ]; do args+=("$1"); shift; done
  shift
  rm -f "$result" "$result.partial"
  local start=$SECONDS
  expect 2 "${args[@]}" -- timeout -k 5 120 "$@"
  local took=$((SECONDS - start))
  [ "$took" -le "$limit" ] || fail "refused after ${took} s, more than $limit s"
  [ ! -e "$result" ] || fail "$result exists after a refused run"
  [ ! -e "$result.partial" ] || fail "$result.partial exists after a refused run"
}

quick=$src/inputs/quickstart.toml
# A separated deck: one attention rank, the rest experts.
sep=(run "$src/tests/decks/tiny-moe8.toml" --set parallel.attn_ranks=1 --set output.file="$result")
# The quickstart deck on one rank, writing this case's results file.
one=(run "$quick" --set parallel.dp=1 --set output.file="$result")
# Two attention ranks, replica buddies, and two FFN ranks.
replicas=(--set parallel.attn_ranks=2 --set parallel.dp=2 --set parallel.attn_replicas=2)
case $case_name in
  help) expect 0 "run" "check" "info" "--set" "model.layers" -- "$exe" --help ;;
  version) expect 0 "moeproxy 0." -- "$exe" --version
    # The commit is read at build time: a build after a commit names that commit. The tests
    # run on the tree they were built from (make test builds first).
    if head=$(git -C "$src" rev-parse --short=12 HEAD 2>/dev/null); then
      grep -Eq "\(git $head(-dirty)?\)" "$log" || fail "--version does not name HEAD $head: $(cat "$log")"
    fi ;;
  info) expect 0 "Kokkos" "MPI ranks: 2" -- "$mpiexec" -n 2 "$exe" info ;;
  check-ok) expect 0 "valid for 4 ranks" "rank 3" "memory estimate" -- "$exe" check "$quick" --ranks 4 ;;
  bad-key)
    printf '[model]\nlayers = 2\nhiden = 64\n' > "$bad"
    expect 2 "model.hiden" "model.hidden" "$bad:3" -- "$exe" run "$bad" ;;
  bad-type)
    printf '[model]\nlayers = "four"\n' > "$bad"
    expect 2 "model.layers" "four" "integer" -- "$exe" run "$bad" ;;
  bad-set) expect 2 "--set" "parallel.tpp" -- "$exe" run "$quick" --set parallel.tpp=2 ;;
  missing-deck) expect 2 "no-such-deck.toml" -- "$exe" run "$out/no-such-deck.toml" ;;
  bad-toml)
    printf '[model\nlayers = 2\n' > "$bad"
    expect 2 "$bad:1" -- "$exe" run "$bad" ;;
  bad-layout) expect 2 "parallel.dp=4" "mpiexec -n 4" -- "$mpiexec" -n 2 "$exe" run "$quick" ;;
  bench-cpu)  # every case runs and prints a row; speed is not asserted
    expect 0 "of gemm" "^gemm " "^moe-d8192-top1 " "^moe-d4096-top2 " "^attn-32x128 " "^attn-16x512 " \
      "^model-prefill " "^model-decode " "ms per step" -- "$exe" bench --cpu --scale 64 --warmup 0 --iterations 1 ;;
  bench-one-case) expect 0 "^gemm " "^attn-16x512 " -- "$exe" bench --cpu --scale 64 --iterations 1 --case attn-16x512
    if grep -q "^moe-" "$log"; then fail "cases not asked for ran"; fi ;;
  bench-fp16) expect 0 ", fp16, " "^gemm " "^moe-d4096-top2 " -- \
    "$exe" bench --cpu --scale 64 --warmup 0 --iterations 1 --precision fp16 --case moe-d4096-top2 ;;
  bench-bad) expect 2 "--case" -- "$exe" bench --case no-such-case ;;
  calibrate-bad-sweep)
    rm -f "$out/never.toml"
    expect 2 "--sweeps: Value 0 not in range" -- "$exe" calibrate --out "$out/never.toml" --sweeps 1,0
    [ ! -e "$out/never.toml" ] || fail "a refused calibrate wrote a machine file" ;;
  nccl-on-host) refuse 'parallel.comm = "nccl"' "host (CPU) build" "cmake --preset cuda" -- \
    "$exe" "${one[@]}" --set parallel.comm=nccl ;;
  run-quickstart)
    rm -f "$out/quick.h5"
    expect 0 "PERFORMANCE prefill_tokens_per_s=" "VERIFICATION PASS" "^PASS$" -- \
      "$mpiexec" -n 4 "$exe" run "$quick" --set output.file="$out/quick.h5"
    h5dump -a complete "$out/quick.h5" > "$log" 2>&1 || fail "h5dump cannot read the result file"
    grep -q "(0): 1" "$log" || fail "the result file is not marked complete"
    [ ! -e "$out/quick.h5.partial" ] || fail "a .partial file was left behind" ;;
  layers-zero) refuse "model.layers = 0" "between 1 and" -- "$exe" "${one[@]}" --set model.layers=0 ;;
  batch-negative)
    printf '[workload]\nbatch = -3\n[output]\nfile = "%s"\n' "$result" > "$bad"
    refuse "workload.batch = -3" "$bad:2" "between 1 and" -- "$exe" run "$bad" ;;
  hidden-absurd) refuse "model.hidden = 99999999999" "between 1 and" -- "$exe" "${one[@]}" --set model.hidden=99999999999 ;;
  topk-experts)
    printf '[model]\nexperts = 4\ntop_k = 5\n[output]\nfile = "%s"\n' "$result" > "$bad"
    refuse "model.top_k = 5" "$bad:3" "model.experts = 4" -- "$exe" run "$bad" ;;
  dp-batch) refuse "parallel.dp=3" "workload.batch=8" -- "$mpiexec" -n 3 "$exe" run "$quick" --set parallel.dp=3 --set output.file="$result" ;;
  expert-map-duplicate) refuse "parallel.expert_map" "expert 3 is on ranks 0 and 1" "exactly one rank" -- \
    "$mpiexec" -n 2 "$exe" run "$quick" --set parallel.dp=2 --set parallel.ep=2 \
    --set 'parallel.expert_map=[[0,1,2,3],[3,4,5,6,7]]' --set output.file="$result" ;;
  expert-map-missing) refuse "parallel.expert_map" "expert 3 is on no rank" -- \
    "$mpiexec" -n 2 "$exe" run "$quick" --set parallel.dp=2 --set parallel.ep=2 \
    --set 'parallel.expert_map=[[0,1,2],[4,5,6,7]]' --set output.file="$result" ;;
  expert-map-length) refuse "parallel.expert_map" "1 rank lists" "parallel.ep=2" -- \
    "$mpiexec" -n 2 "$exe" run "$quick" --set parallel.dp=2 --set parallel.ep=2 \
    --set 'parallel.expert_map=[[0,1,2,3,4,5,6,7]]' --set output.file="$result" ;;
  expert-map-layers) refuse "parallel.expert_map" "for 3 layers" "model.layers=2" -- \
    "$mpiexec" -n 2 "$exe" run "$quick" --set parallel.dp=2 --set parallel.ep=2 \
    --set 'parallel.expert_map=[[[0,1,2,3],[4,5,6,7]],[[0,1,2,3],[4,5,6,7]],[[0],[1,2,3,4,5,6,7]]]' \
    --set output.file="$result" ;;
  heads-sum) refuse "parallel.head_distribution" "sums to 7" "model.heads=8" -- \
    "$mpiexec" -n 2 "$exe" run "$quick" --set parallel.dp=1 --set parallel.tp=2 \
    --set 'parallel.head_distribution=[4,3]' --set output.file="$result" ;;
  heads-mxn) refuse "parallel.head_distribution" "parallel.head_groups=2" "evenly" -- \
    "$mpiexec" -n 2 "$exe" run "$quick" --set parallel.dp=1 --set parallel.head_groups=2 \
    --set 'parallel.head_distribution=[5,3]' --set output.file="$result" ;;
  # Attention replicas and the failover drill (docs/reliability.md): on the quickstart deck
  # with 2 attention ranks (dp=2) and 2 FFN ranks.
  replicas-dp) refuse "parallel.attn_replicas=3" "parallel.dp=4" "multiple of 3" -- "$mpiexec" -n 4 "$exe" run "$quick" --set parallel.attn_replicas=3 --set output.file="$result" ;;
  replicas-ep) refuse "parallel.attn_replicas=2" "parallel.ep=2" "no copy" -- "$mpiexec" -n 4 "$exe" run "$quick" --set parallel.ep=2 --set parallel.attn_replicas=2 --set output.file="$result" ;;
  fail-rank-range) refuse "faults.fail_rank=9" "attention rank 0..1" -- "$mpiexec" -n 4 "$exe" run "$quick" "${replicas[@]}" --set faults.fail_rank=9 --set faults.fail_step=1 --set output.file="$result" ;;
  fail-rank-ffn) refuse "faults.fail_rank=3" "FFN rank" "attention rank 0..1" -- "$mpiexec" -n 4 "$exe" run "$quick" "${replicas[@]}" --set faults.fail_rank=3 --set faults.fail_step=1 --set output.file="$result" ;;
  fail-step) refuse "faults.fail_step = 16" "workload.decode_steps = 16" "0..15" -- "$mpiexec" -n 4 "$exe" run "$quick" "${replicas[@]}" --set faults.fail_rank=1 --set faults.fail_step=16 --set output.file="$result" ;;
  fail-no-replica) refuse "faults.fail_rank=1" "parallel.attn_replicas=1" "parallel.attn_replicas = 2" -- "$mpiexec" -n 4 "$exe" run "$quick" --set parallel.attn_ranks=2 --set parallel.dp=2 --set faults.fail_rank=1 --set faults.fail_step=1 --set output.file="$result" ;;
  fail-step-alone) refuse "faults.fail_rank" "faults.fail_step = 2" "set both" -- "$mpiexec" -n 4 "$exe" run "$quick" "${replicas[@]}" --set faults.fail_step=2 --set output.file="$result" ;;
  tp-three) refuse "parallel.tp=3" -- "$mpiexec" -n 3 "$exe" run "$quick" --set parallel.dp=1 --set parallel.tp=3 --set output.file="$result" ;;
  ep-chunks-zero) refuse "parallel.ep_chunks = 0" "between 1 and" -- "$exe" "${one[@]}" --set parallel.ep_chunks=0 ;;
  ep-chunks-no-ep) refuse "parallel.ep_chunks=2" "parallel.ep > 1" -- "$exe" "${one[@]}" --set parallel.ep_chunks=2 ;;
  ep-chunks-separation) refuse "parallel.ep_chunks=2" "parallel.micro_batches" -- \
    "$mpiexec" -n 2 "$exe" run "$quick" --set parallel.dp=1 --set parallel.attn_ranks=1 --set parallel.ep_chunks=2 \
    --set output.file="$result" ;;
  precision-unknown) refuse "model.precision" "bf16" '"fp32" | "fp16"' -- "$exe" "${one[@]}" --set model.precision=bf16 ;;
  compression-unknown)
    refuse "parallel.comm_compression" "fp8" '"none" | "int8"' -- "$exe" "${one[@]}" --set parallel.comm_compression=fp8 ;;
  compression-one-rank)
    # One rank has no transfer to compress: it runs, verifies with the precision's tolerance
    # and says it saved nothing.
    expect 0 "COMPRESSION int8 bytes_saved=0 .* compression_tolerance=0" "compressed nothing" "^PASS$" -- \
      "$exe" "${one[@]}" --set parallel.comm_compression=int8 ;;
  precision-fp16)
    rm -f "$result"
    expect 0 "VERIFICATION PASS" "^PASS$" -- "$exe" "${one[@]}" --set model.precision=fp16
    [ -f "$result" ] || fail "no results file"
    # binary16 storage halves the KV cache exactly (weights: all but norms and router).
    kv_mib() { "$exe" check "$quick" --ranks 1 --set parallel.dp=1 "$@" | sed -n 's/.*kv cache \([0-9.]*\) MiB.*/\1/p'; }
    kv32=$(kv_mib --set workload.prompt=1000) kv16=$(kv_mib --set workload.prompt=1000 --set model.precision=fp16)
    "$exe" check "$quick" --ranks 1 --set parallel.dp=1 --set model.precision=fp16 > "$log" 2>&1
    grep -q "memory estimate per rank (fp16: binary16 weights and kv cache)" "$log" || fail "check does not say fp16"
    /usr/bin/python3 -c "import sys; a, b = float(sys.argv[1]), float(sys.argv[2]); sys.exit(0 if a > 0 and abs(b - a / 2) <= 0.05 else 1)" \
      "$kv32" "$kv16" || fail "fp16 kv cache estimate $kv16 MiB is not half of fp32's $kv32 MiB" ;;
  verify-file-missing)
    printf '[verify]\nmode = "file"\n[output]\nfile = "%s"\n' "$result" > "$bad"
    refuse 'verify.mode = "file"' "$bad:2" "needs verify.file" -- "$exe" run "$bad" ;;
  checkpoint-missing)
    refuse "model.checkpoint" "no-such-weights.h5" "no such file" -- \
      "$exe" "${one[@]}" --set model.checkpoint="$out/no-such-weights.h5" ;;
  checkpoint-not-hdf5)
    : > "$out/empty-weights.h5"
    refuse "model.checkpoint" "empty-weights.h5" "not an HDF5 file" -- \
      "$exe" "${one[@]}" --set model.checkpoint="$out/empty-weights.h5" ;;
  checkpoint-attribute)
    # Weights of a 3-layer model for the 2-layer deck.
    "$exe" export-checkpoint "$quick" --set model.layers=3 --out "$out/three-layers.h5" > "$log" 2>&1 \
      || fail "export-checkpoint failed"
    refuse "three-layers.h5" "layers = 3" "model.layers = 2" -- \
      "$exe" "${one[@]}" --set model.checkpoint="$out/three-layers.h5" ;;
  checkpoint-shape | checkpoint-dataset-missing)
    "$exe" export-checkpoint "$quick" --out "$out/$case_name-weights.h5" > "$log" 2>&1 || fail "export-checkpoint failed"
    /usr/bin/python3 - "$out/$case_name-weights.h5" "$case_name" <<'PY' || fail "could not edit the checkpoint"
import sys
import h5py
import numpy as np
with h5py.File(sys.argv[1], "r+") as f:
    del f["layers/1/w3"]
    if sys.argv[2] == "checkpoint-shape":  # one expert's [d, f] where [E, d, f] is needed
        f["layers/1/w3"] = np.zeros((128, 256), dtype=np.float32)
PY
    if [ "$case_name" = checkpoint-shape ]; then
      refuse "$case_name-weights.h5" "/layers/1/w3" "shape \[128, 256\]" "\[8, 128, 256\]" -- \
        "$exe" "${one[@]}" --set model.checkpoint="$out/$case_name-weights.h5"
    else
      refuse "$case_name-weights.h5" "/layers/1/w3 is missing" -- \
        "$exe" "${one[@]}" --set model.checkpoint="$out/$case_name-weights.h5"
    fi ;;
  output-proc)
    result=/proc/moeproxy-test/run.h5
    refuse "output.file" "/proc/moeproxy-test" -- "$exe" "${one[@]}" --set output.file="$result" ;;
  output-parent-file)
    : > "$out/regular-file"
    result=$out/regular-file/run.h5
    refuse "output.file" "regular-file" "Not a directory" -- "$exe" "${one[@]}" --set output.file="$result" ;;
  output-directory)
    mkdir -p "$out/a-directory.h5"
    refuse "output.file" "is a directory" -- "$exe" "${one[@]}" --set output.file="$out/a-directory.h5"
    [ -d "$out/a-directory.h5" ] && [ ! -e "$out/a-directory.h5.partial" ] || fail "the directory was touched" ;;
  output-bare-name)  # a file name alone: in the working directory
    rm -f "$out/bare-name.h5"
    expect 0 "bare-name.h5" -- bash -c 'cd "$1" && shift && "$@"' _ "$out" "$exe" run "$quick" --set parallel.dp=1 \
      --set output.file=bare-name.h5
    [ -s "$out/bare-name.h5" ] || fail "bare-name.h5 was not written in the working directory" ;;
  output-empty) refuse "output.file" "expected a file name" -- "$exe" "${one[@]}" --set output.file= ;;
  output-colon)  # MPI-IO would take "run" for a file-system type, after the whole run
    refuse "output.file" "contains ':'" -- "$exe" "${one[@]}" --set output.file="$out/run:1.h5"
    result=$out/run:1-predicted.h5
    refuse "run:1-predicted.h5" "contains ':'" -- "$exe" predict "$quick" \
      --machine "$src/inputs/machines/h100-sxm-ndr.toml" --set output.file="$out/run:1.h5" ;;
  toml-unterminated)
    printf '[model]\nlayers = 2\n[output]\nfile = "%s\n' "$result" > "$bad"
    refuse "$bad:4" "invalid TOML" -- "$exe" run "$bad" ;;
  toml-binary)
    printf '\xff\xfe\x00[model]\nlayers = 2\n' > "$bad"
    refuse "$bad" -- "$exe" run "$bad" --set output.file="$result" ;;
  toml-header-key)
    # toml++ 3.3 breaks a precondition of its own on this input (docs/reliability.md).
    printf '[model]\nlayers = 2\n[=\n' > "$bad"
    refuse "$bad:3" "invalid TOML" -- "$exe" run "$bad" --set output.file="$result" ;;
  set-no-equals) refuse "--set" '"foo"' "section.key=value" -- "$exe" "${one[@]}" --set foo ;;
  set-empty-value) refuse "model.layers" "expected an integer" -- "$exe" "${one[@]}" --set model.layers= ;;
  set-not-number) refuse "model.layers" '"abc"' "expected an integer" -- "$exe" "${one[@]}" --set model.layers=abc ;;
  memory-model)
    refuse "does not fit in host memory" "weights" "model.layers = 1000" "model.hidden = 65536" "--no-preflight" -- \
      "$mpiexec" -n 2 "$exe" run "$quick" --set parallel.dp=2 --set model.hidden=65536 --set model.layers=1000 \
      --set output.file="$result" ;;
  memory-batch)
    refuse "does not fit in host memory" "KV cache" "workload.batch = 1000000" "parallel.dp" "workload.prompt" -- \
      "$exe" "${one[@]}" --set workload.batch=1000000 --set workload.prompt=2000 ;;
  no-preflight)
    rm -f "$result"
    expect 0 "^PASS$" -- "$exe" "${one[@]}" --no-preflight
    ! grep -q "host memory per rank" "$log" || fail "--no-preflight still ran the pre-flight"
    [ -f "$result" ] || fail "no results file" ;;
  capacity-sample)
    # Dropped tokens depend on the tokens routed together: the reference runs the whole
    # route groups the sample falls in (one rank: the batch; two micro-batches: halves), and
    # cannot where the grouping changes during the run (the failover drill, balancing).
    cap=(run "$src/tests/decks/tiny-moe8.toml" --set model.capacity_factor=1.0 --set workload.routing=zipf:1.5
         --set output.file="$out/capacity.h5")
    expect 0 "^PASS$" "16 sequences routed as in the run" "verify.sample = 2 rounded up to whole groups" -- \
      "$exe" "${cap[@]}" --set verify.sample=2
    expect 0 "^PASS$" "8 sequences routed as in the run (1 prefill and 1 decode groups)" -- \
      "$exe" "${cap[@]}" --set verify.sample=2 --set parallel.micro_batches=2
    expect 0 "^PASS$" "16 sequences routed as in the run (2 prefill and 2 decode groups)" -- \
      "$exe" "${cap[@]}" --set verify.sample=16 --set parallel.micro_batches=2
    expect 0 "^VERIFICATION SKIPPED" "dropped tokens depend" "faults.fail_rank" -- "$mpiexec" -n 4 "$exe" "${cap[@]}" \
      "${replicas[@]}" --set faults.fail_rank=0 --set faults.fail_step=1
    expect 0 "^VERIFICATION SKIPPED" "dropped tokens depend" "parallel.balance_threshold" -- "$mpiexec" -n 2 \
      "$exe" "${cap[@]}" --set parallel.attn_ranks=1 --set parallel.balance_threshold=0.05 ;;
  # Balancing keys: a fraction in [0, 1), an interval of at least one step, separation only,
  # a machine file that exists.
  balance-threshold-negative)
    refuse "parallel.balance_threshold = -0.1" ">= 0.0 and < 1.0" -- "$exe" "${sep[@]}" --set parallel.balance_threshold=-0.1 ;;
  balance-threshold-one)
    refuse "parallel.balance_threshold = 1" ">= 0.0 and < 1.0" -- "$exe" "${sep[@]}" --set parallel.balance_threshold=1 ;;
  balance-interval-zero)
    refuse "parallel.balance_interval = 0" "between 1 and" -- "$exe" "${sep[@]}" --set parallel.balance_interval=0 ;;
  balance-no-separation)
    refuse "parallel.balance_threshold = 0.05" "parallel.attn_ranks = 0" "set parallel.attn_ranks > 0" -- \
      "$exe" "${one[@]}" --set parallel.balance_threshold=0.05 ;;
  balance-machine-missing)
    refuse "parallel.balance_machine" "no-such-machine.toml" -- "$mpiexec" -n 2 "$exe" "${sep[@]}" \
      --set parallel.balance_threshold=0.05 --set parallel.balance_machine="$out/no-such-machine.toml" ;;
  *) echo "unknown case $case_name"; exit 2 ;;
esac
