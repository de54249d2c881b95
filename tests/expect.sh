# Shared by the test scripts (source it after setting case_name and log):
#   fail MESSAGE: prints the failure and the case's last output, exits 1;
#   expect CODE PATTERN... -- COMMAND...: runs COMMAND with stdout + stderr in $log and
#   requires its exit code and every pattern (grep) in the output.
fail() {
  echo "FAIL ($case_name): $*"
  if [ -s "$log" ]; then echo "--- last output ($log) ---"; tail -60 "$log"; fi
  exit 1
}

expect() {
  local code=$1; shift
  local patterns=()
  while [ "$1" != "--" ]; do patterns+=("$1"); shift; done
  shift
  "$@" > "$log" 2>&1
  local got=$?
  [ "$got" -eq "$code" ] || fail "exit code $got, expected $code: $*"
  for p in "${patterns[@]}"; do grep -q -- "$p" "$log" || fail "output lacks '$p': $*"; done
  echo "ok ($case_name): exit $got"
}
