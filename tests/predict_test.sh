#!/usr/bin/env bash
# moeproxy predict and calibrate as a user meets them:
#   predict_test.sh CASE MOEPROXY MPIEXEC SOURCE_DIR OUTDIR
# seeds: every seed deck at its stated rank count, in seconds, to a complete results file
#        marked predicted = 1 that analysis/moeproxy-report reads.
# calibrate: a machine file measured on 2 ranks, read back by predict.
# bad-machine: an unknown machine key is refused naming the key and its line.
set -uo pipefail
case_name=$1 exe=$2 mpiexec=$3 src=$4 out=$5/$1
rm -rf "$out" && mkdir -p "$out"
fail() { echo "FAIL ($case_name): $*"; exit 1; }
python=/usr/bin/python3

# check_file FILE RANKS: complete, predicted, one row per rank, every phase table finite.
check_file() {
  "$python" - "$1" "$2" <<'PY' || exit 1
import sys, h5py, numpy as np
path, ranks = sys.argv[1], int(sys.argv[2])
with h5py.File(path, "r") as f:
    a = f.attrs
    assert a["complete"] == 1, "incomplete"
    assert a["predicted"] == 1, "predicted flag missing"
    assert a["mpi_size"] == ranks, f"mpi_size {a['mpi_size']} != {ranks}"
    for name in ("timing/prefill", "timing/decode", "memory/bytes", "flops/prefill", "comm/seconds"):
        assert f[name].shape[0] == ranks, f"{name} has {f[name].shape[0]} rows"
    for name in ("timing/prefill", "timing/decode"):
        assert np.all(np.isfinite(f[name][...])) and np.all(f[name][...] >= 0), name
    steps = f["timing/decode_step_wall"][...]
    assert steps.shape[0] == ranks and np.allclose(steps.sum(axis=1), f["timing/decode_wall"][...]), "decode steps"
    s = f["summary"].attrs
    assert s["ttft_s"] > 0 and s["tpot_s"] > 0 and s["prefill_tokens_per_s"] > 0, "summary"
print("ok:", path)
PY
}

case $case_name in
  seeds)
    machines=$src/inputs/machines
    for deck in "$src"/inputs/seeds/*.toml; do
      name=$(basename "$deck" .toml)
      ranks=$(sed -n 's/^# ranks: *\([0-9][0-9]*\).*/\1/p' "$deck" | head -n 1)
      machine=$machines/h100-sxm-ndr.toml
      case $name in seed002*|seed004*) machine=$machines/a100-80gb-hdr.toml ;; esac
      start=$SECONDS
      "$exe" predict "$deck" --machine "$machine" --ranks "${ranks:-1}" --out "$out/$name.h5" > "$out/$name.log" 2>&1 \
        || { cat "$out/$name.log"; fail "predict refused $deck"; }
      [ $((SECONDS - start)) -le 20 ] || fail "$name took more than 20 s"
      grep -q "^PERFORMANCE prefill_tokens_per_s=" "$out/$name.log" || fail "$name: no PERFORMANCE line"
      grep -q "predicted, not run" "$out/$name.log" || fail "$name: the report does not say predicted"
      check_file "$out/$name.h5" "${ranks:-1}"
    done
    "$python" "$src/analysis/moeproxy-report" --out "$out/report" --no-plots "$out"/*.h5 || fail "moeproxy-report failed"
    grep -q "predicted" "$out/report/summary.md" || fail "the analysis report does not mark the runs predicted"
    ;;
  calibrate)
    "$mpiexec" -n 2 "$exe" calibrate --out "$out/local.toml" --seconds 0.02 --sweeps 16,1 > "$out/calibrate.log" 2>&1 \
      || { cat "$out/calibrate.log"; fail "calibrate failed"; }
    grep -q "alltoallv 2 ranks" "$out/calibrate.log" || fail "no collective measured on 2 ranks"
    [ "$(grep -c '^\[\[profile.sweep\]\]' "$out/local.toml")" = 2 ] && grep -q '^bytes = 1048576 ' "$out/local.toml" \
      && [ "$(grep -c '^\[\[profile.weight_sweep\]\]' "$out/local.toml")" = 2 ] \
      && grep -q '^shared_caches = true ' "$out/local.toml" || fail "not the two sweeps of each kind asked for, on shared caches"
    "$exe" predict "$src/tests/decks/tiny-moe.toml" --machine "$out/local.toml" --set parallel.dp=2 \
      --set parallel.ep=2 --out "$out/tiny.h5" > "$out/predict.log" 2>&1 || { cat "$out/predict.log"; fail "predict"; }
    check_file "$out/tiny.h5" 2
    grep -q '^gemm = \[\[1, 16, ' "$out/local.toml" && grep -q '^attention_decode = \[\[16, ' "$out/local.toml" \
      || fail "the machine file has no kernel profiles"
    grep -q "measured profiles (gemm, activate, add" "$out/predict.log" || { cat "$out/predict.log"; fail "predict ignored the profiles"; }
    ;;
  bad-machine)
    sed 's/^peak_tflops_fp32/peak_tflop_fp32/' "$src/inputs/machines/h100-sxm-ndr.toml" > "$out/bad.toml"
    line=$(grep -n '^peak_tflop_fp32' "$out/bad.toml" | cut -d: -f1)
    "$exe" predict "$src/inputs/quickstart.toml" --machine "$out/bad.toml" > "$out/log" 2>&1
    code=$?
    [ "$code" -eq 2 ] || { cat "$out/log"; fail "exit code $code, expected 2"; }
    grep -q "bad.toml:$line" "$out/log" && grep -q "compute.peak_tflop_fp32" "$out/log" \
      || { cat "$out/log"; fail "the message does not name the key and its line"; }
    ;;
  *) fail "unknown case" ;;
esac
echo "ok ($case_name)"
