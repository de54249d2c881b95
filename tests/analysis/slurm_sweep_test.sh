#!/usr/bin/env bash
# A sweep through a real Slurm: start a one-node cluster on this machine (Debian's
# slurm-wlm and munge, all state in a temporary folder, non-default ports, a private munge
# socket), submit the sweep's job array with sbatch --wait, read the results with the
# report tool, and stop the daemons by their pids whatever happens.
#
#   slurm_sweep_test.sh MOEPROXY SOURCE_DIR OUTDIR
#
# Exit codes: 0 passed, 1 failed, 77 skipped (no Slurm or munge here, not root, or the
# daemons would not start): CTest shows 77 as "Skipped" through SKIP_RETURN_CODE.
set -uo pipefail
exe=$1 src=$2 out=$3
SKIP=77
py=/usr/bin/python3

skip() { echo "SKIPPED: $* (the real-Slurm sweep test needs root, slurm-wlm and munge: apt-get install slurm-wlm munge)"; exit $SKIP; }
fail() { echo "FAIL (slurm-sweep): $*"; show_logs; exit 1; }
show_logs() {
  for f in "${work:-/nonexistent}"/log/*.log "${work:-/nonexistent}"/munge/munged.log; do
    [ -f "$f" ] && { echo "--- $f (last lines) ---"; tail -15 "$f"; }
  done
  for f in "$out"/sweep/logs/*.out; do
    [ -f "$f" ] && { echo "--- $f ---"; tail -15 "$f"; }
  done
}

for cmd in munged slurmctld slurmd sbatch sinfo scontrol; do
  command -v $cmd >/dev/null 2>&1 || skip "$cmd not found"
done
[ "$(id -u)" -eq 0 ] || skip "not root (slurmd runs jobs as their users and must be root)"

rm -rf "$out"; mkdir -p "$out"
work=$(mktemp -d "${TMPDIR:-/tmp}/moeproxy-slurm.XXXXXX")
pids=()
cleanup() {
  local p
  # Jobs left by a failure would outlive slurmd as orphaned step daemons: cancel them first.
  if [ -f "$work/slurmctld.pid" ]; then
    timeout 10 scancel --full --partition=ctest 2>/dev/null
    for _ in 1 2 3 4 5 6 7 8 9 10; do [ -z "$(timeout 5 squeue -h 2>/dev/null)" ] && break; sleep 0.5; done
  fi
  for f in "$work/slurmd.pid" "$work/slurmctld.pid" "$work/munge/munged.pid"; do
    [ -f "$f" ] && p=$(cat "$f") && [ -n "$p" ] && kill "$p" 2>/dev/null && pids+=("$p")
  done
  # give them a moment to exit, then make sure
  for p in "${pids[@]}"; do
    for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$p" 2>/dev/null || break; sleep 0.2; done
    kill -9 "$p" 2>/dev/null
  done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

# munge: a private key and socket, so a system munged (if any) is neither needed nor touched.
mkdir -p "$work/munge" "$work/state" "$work/spool" "$work/log"
chmod 711 "$work" "$work/munge"
dd if=/dev/urandom of="$work/munge/munge.key" bs=1024 count=1 2>/dev/null
chmod 400 "$work/munge/munge.key"
munged --force --key-file="$work/munge/munge.key" --socket="$work/munge/munge.sock" \
  --pid-file="$work/munge/munged.pid" --log-file="$work/munge/munged.log" \
  --seed-file="$work/munge/munged.seed" > "$work/log/munged.out" 2>&1 \
  || skip "munged would not start: $(tail -1 "$work/log/munged.out")"

# Ports from the pid: two builds testing at once (host, sanitize) must not collide.
port=$(( 20000 + ($$ % 20000) * 2 ))
host=$(hostname -s)
# nproc would answer OMP_NUM_THREADS (1 under CTest). The node claims at least 2 CPUs, so
# the 2-rank points fit on a 1-core CI machine too (config_overrides: trust the config).
cpus=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)
[ "$cpus" -ge 2 ] || cpus=2
export SLURM_CONF=$work/slurm.conf
cat > "$SLURM_CONF" <<EOF
ClusterName=moeproxytest
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort=$port
SlurmdPort=$((port + 1))
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$work/munge/munge.sock
StateSaveLocation=$work/state
SlurmdSpoolDir=$work/spool
SlurmctldPidFile=$work/slurmctld.pid
SlurmdPidFile=$work/slurmd.pid
SlurmctldLogFile=$work/log/slurmctld.log
SlurmdLogFile=$work/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
SchedulerType=sched/builtin
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
# sbatch --wait polls at intervals that grow up to MinJobAge/2 (32 s with the default 300):
# a short MinJobAge keeps it at 2 s, so the test ends soon after the array.
MinJobAge=4
SlurmdParameters=config_overrides
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus State=UNKNOWN
PartitionName=ctest Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
EOF
slurmctld -f "$SLURM_CONF" -c > "$work/log/slurmctld.out" 2>&1 || skip "slurmctld would not start: $(tail -1 "$work/log/slurmctld.out")"
slurmd -f "$SLURM_CONF" -N "$host" > "$work/log/slurmd.out" 2>&1 || skip "slurmd would not start: $(tail -1 "$work/log/slurmd.out")"
state=""
for _ in $(seq 1 60); do
  state=$(sinfo -h -n "$host" -o '%t' 2>/dev/null)
  case $state in idle*|mix*|alloc*) break ;; esac
  sleep 0.5
done
case $state in idle*|mix*|alloc*) echo "slurm: node $host is $state (ports $port, $((port + 1)))" ;;
  *) show_logs; skip "the Slurm node did not come up (state '${state:-none}')" ;; esac

# The sweep: the quickstart deck on 1 and 2 ranks, two decode lengths; MPICH ranks started
# by srun through PMI2 (the test cluster's MpiDefault is none).
spec=$out/spec.toml
cat > "$spec" <<EOF
deck = "$src/inputs/quickstart.toml"
name = "slurm-ctest"
[set]
"verify.sample" = 2
[grid]
"parallel.dp" = [1, 2]
"workload.decode_steps" = [4, 8]
[slurm]
time = "00:05:00"
launcher = "srun --mpi=pmi2"
env = { OMP_NUM_THREADS = "1", OMP_PROC_BIND = "false" }
EOF
"$src/job-scripts/sweep" "$spec" --out "$out/sweep" --moeproxy "$exe" || fail "sweep expansion failed"
grep -q '^#SBATCH --array=0-3$' "$out/sweep/sweep.sbatch" || fail "expected the array 0-3"

echo "slurm: sbatch --wait $out/sweep/sweep.sbatch"
timeout 120 sbatch --wait "$out/sweep/sweep.sbatch"
rc=$?
[ $rc -eq 0 ] || { squeue 2>/dev/null; fail "the job array failed (sbatch --wait exit code $rc; 124: timed out)"; }
for t in 0 1 2 3; do
  grep -q "exit code 0" "$out"/sweep/logs/slurm-ctest-*_$t.out 2>/dev/null || fail "array task $t did not finish with exit code 0"
done

# Everything complete now: a second expansion has nothing left to run.
"$src/job-scripts/sweep" "$spec" --out "$out/sweep" --moeproxy "$exe" > "$out/resweep.log" 2>&1 \
  || fail "second expansion failed"
grep -q "4 complete (skipped), 0 to run" "$out/resweep.log" || { cat "$out/resweep.log"; fail "completed points were not recognised"; }

# Tables only: the plots have their own test (analysis/report), and this one should stay fast.
"$src/analysis/moeproxy-report" "$out"/sweep/results/*.h5 --out "$out/report" \
  --baseline "$out/sweep/results/p000-dp1-decode_steps4.h5" --no-plots || fail "the report failed on the sweep's results"
$py - "$out/report/summary.csv" <<'EOF' || fail "the report does not show the 4 points"
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
assert len(rows) == 4, rows
assert sorted(r["layout"] for r in rows) == ["dp=1", "dp=1", "dp=2", "dp=2"], rows
assert all(r["verification"] == "PASS" and float(r["tpot_s"]) > 0 for r in rows), rows
print("report:", ", ".join(f"{r['run']} TPOT {float(r['tpot_s']) * 1e3:.2f} ms" for r in rows))
EOF
echo "ok (slurm-sweep): a 4-point job array ran through slurmctld/slurmd, all points PASS and are reported"
