#!/usr/bin/env bash
# The command line as a user meets it: cli_test.sh CASE MOEPROXY MPIEXEC SOURCE_DIR OUTDIR
# Each case checks the exit code and the words of the message.
set -uo pipefail
case_name=$1 exe=$2 mpiexec=$3 src=$4 out=$5
mkdir -p "$out"
log=$out/$case_name.log
bad=$out/$case_name.toml

fail() { echo "FAIL ($case_name): $*"; echo "--- output ---"; cat "$log"; exit 1; }
# expect CODE PATTERN... -- COMMAND...
expect() {
  local code=$1; shift
  local patterns=()
  while [ "$1" != "--" ]; do patterns+=("$1"); shift; done
  shift
  "$@" > "$log" 2>&1
  local got=$?
  [ "$got" -eq "$code" ] || fail "exit code $got, expected $code"
  for p in "${patterns[@]}"; do grep -q -- "$p" "$log" || fail "output lacks '$p'"; done
  echo "ok ($case_name): exit $got"
}

quick=$src/inputs/quickstart.toml
case $case_name in
  help) expect 0 "run" "check" "info" "--set" "model.layers" -- "$exe" --help ;;
  version) expect 0 "moeproxy 0." -- "$exe" --version ;;
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
  run-quickstart)
    rm -f "$out/quick.h5"
    expect 0 "PERFORMANCE prefill_tokens_per_s=" "VERIFICATION PASS" "^PASS$" -- \
      "$mpiexec" -n 4 "$exe" run "$quick" --set output.file="$out/quick.h5"
    h5dump -a complete "$out/quick.h5" > "$log" 2>&1 || fail "h5dump cannot read the result file"
    grep -q "(0): 1" "$log" || fail "the result file is not marked complete"
    [ ! -e "$out/quick.h5.partial" ] || fail "a .partial file was left behind" ;;
  *) echo "unknown case $case_name"; exit 2 ;;
esac
