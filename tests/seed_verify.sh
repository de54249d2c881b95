#!/usr/bin/env bash
# A small seed deck run verified at its rank count:
#   seed_verify.sh MOEPROXY MPIEXEC DECK OUTDIR [--set k=v ...]
# Runs DECK on the ranks its "# ranks: N" line names (MPICH oversubscribes the cores) and
# requires exit 0 and the PASS line: the run agreed with the fp64 host reference (with a
# capacity factor, routed in the run's groups; parallel/route_groups.hpp). SKIPPED fails.
set -uo pipefail
exe=$1 mpiexec=$2 deck=$3 outdir=$4
shift 4
case_name=$(basename "$deck" .toml)
mkdir -p "$outdir"
log=$outdir/$case_name.log
source "$(dirname "$0")/expect.sh"
ranks=$(sed -n 's/^# ranks: *\([0-9][0-9]*\).*/\1/p' "$deck" | head -n 1)
[ -n "$ranks" ] || { echo "FAIL: $deck has no '# ranks: N' line"; exit 1; }
start=$SECONDS
expect 0 "^PASS$" -- "$mpiexec" -n "$ranks" "$exe" run "$deck" "$@" --set output.file="$outdir/$case_name.h5"
grep "^VERIFICATION" "$log"
echo "ok: $case_name verified on $ranks ranks in $((SECONDS - start)) s"
