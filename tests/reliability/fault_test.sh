#!/usr/bin/env bash
# A rank dying in the middle of a run ends the whole job quickly, with a non-zero exit code
# below 128 and no results file that looks valid: fault_test.sh CASE MOEPROXY MPIEXEC OUTDIR
#   segv: rank 1 crashes (SIGSEGV): it names itself (rank, pid, host, signal) before dying.
#   kill: rank 1 is killed (SIGKILL, as by the OOM killer): nothing can be said by the rank;
#         the launcher must still end the job.
set -uo pipefail
case_name=$1 exe=$2 mpiexec=$3 out=$4
mkdir -p "$out"
result=$out/fault-$case_name.h5 log=$out/fault-$case_name.log
rm -f "$result" "$result.partial" "$log"
source "$(dirname "$0")/../expect.sh"
case $case_name in
  segv) signal=SEGV ;;
  kill) signal=KILL ;;
  *) echo "unknown case $case_name"; exit 2 ;;
esac

# Long enough that the rank is surely inside the decode loop when it dies (progress is
# printed every 10% of the steps, at most once a second). The ranks' command lines start
# with the executable, the launcher's with mpiexec, so the victim below is always a rank.
"$mpiexec" -n 2 "$exe" run "$(dirname "$0")/../../inputs/quickstart.toml" --set parallel.dp=2 \
  --set workload.decode_steps=20000 --set verify.mode=none --set output.file="$result" > "$log" 2>&1 &
launcher=$!
victim=
for _ in $(seq 600); do  # up to 2 min: sanitizer builds are slow
  grep -q "decode step" "$log" 2>/dev/null && victim=$(pgrep -f -n "^$exe run .*fault-$case_name.h5") && break
  sleep 0.2
done
[ -n "$victim" ] || { kill "$launcher"; fail "the run never reached its decode loop"; }
rank=$(tr '\0' '\n' < "/proc/$victim/environ" | sed -n 's/^PMI_RANK=//p')
start=$SECONDS
kill -s "$signal" "$victim"
for _ in $(seq 120); do kill -0 "$launcher" 2> /dev/null || break; sleep 0.5; done
if kill -0 "$launcher" 2> /dev/null; then
  pkill -KILL -f "moeproxy run .*fault-$case_name.h5"; kill -KILL "$launcher"
  fail "the job was still running 60 s after rank $rank died"
fi
wait "$launcher"; code=$?
took=$((SECONDS - start))
echo "job ended ${took} s after rank $rank died, exit code $code"
[ "$code" -ne 0 ] && [ "$code" -lt 128 ] || fail "exit code $code, expected 1..127"
[ ! -e "$result" ] || fail "$result exists after a failed run"
if [ "$case_name" = segv ]; then
  grep -q "moeproxy: rank $rank (pid $victim on .*) died: SIGSEGV" "$log" || fail "rank $rank did not name itself"
fi
echo "ok ($case_name)"
