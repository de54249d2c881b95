#!/usr/bin/env bash
# check_decks.sh MOEPROXY DECK: `moeproxy check` accepts DECK for the rank count a
# "# ranks: N" comment line names (1 when absent), and prints a memory line for each rank.
set -euo pipefail
exe=$1 deck=$2
ranks=$(sed -n 's/^# ranks: *\([0-9][0-9]*\).*/\1/p' "$deck" | head -n 1)
ranks=${ranks:-1}
log=$("$exe" check "$deck" --ranks "$ranks" 2>&1) || { echo "$log"; echo "FAIL: check refused $deck on $ranks ranks"; exit 1; }
echo "$log"
mapped=$(grep -c "^  rank [0-9]*:" <<< "$log" || true)
[ "$mapped" -ge "$ranks" ] || { echo "FAIL: expected a line per rank ($ranks), got $mapped"; exit 1; }
echo "ok: $deck on $ranks ranks"
