#!/usr/bin/env bash
# The analysis tools and job scripts on files the app really wrote:
#   analysis_test.sh CASE MOEPROXY MPIEXEC SOURCE_DIR OUTDIR
# Case "runs" (a CTest fixture) makes the result files the other cases read.
set -uo pipefail
case_name=$1 exe=$2 mpiexec=$3 src=$4 out=$5
py=/usr/bin/python3
runs=$out/runs
report=$src/analysis/moeproxy-report
accept=$src/analysis/moeproxy-accept
sweep=$src/job-scripts/sweep
mkdir -p "$out"
log=$out/$case_name.log

source "$(dirname "$0")/../expect.sh"
ok() { echo "ok ($case_name): $*"; }
need_runs() {
  for f in q1 q2 q4 dense2 incomplete; do
    [ -f "$runs/$f.h5" ] || fail "$runs/$f.h5 missing: the analysis/runs fixture did not run"
  done
}

case $case_name in
  runs)
    rm -rf "$runs"; mkdir -p "$runs"
    for n in 1 2 4; do
      expect 0 "^PASS$" -- "$mpiexec" -n $n "$exe" run "$src/inputs/quickstart.toml" \
        --set parallel.dp=$n --set output.file="$runs/q$n.h5"
    done
    expect 0 "^PASS$" -- "$mpiexec" -n 2 "$exe" run "$src/tests/decks/tiny-dense.toml" \
      --set parallel.dp=2 --set output.file="$runs/dense2.h5"
    # What a killed writer leaves: a real result whose complete flag was never set to 1.
    cp "$runs/q2.h5" "$runs/incomplete.h5"
    $py -c 'import sys, h5py, numpy; h5py.File(sys.argv[1], "a").attrs["complete"] = numpy.int32(0)' \
      "$runs/incomplete.h5" || fail "cannot make the incomplete file"
    ok "4 runs written to $runs" ;;

  report)
    need_runs
    rm -rf "$out/report"
    expect 0 "4 run(s)" -- "$report" "$runs/q1.h5" "$runs/q2.h5" "$runs/q4.h5" "$runs/dense2.h5" \
      --baseline "$runs/q1.h5" --out "$out/report"
    $py - "$out/report" "$runs" > "$log" 2>&1 <<'EOF' || fail "report contents"
import csv, struct, sys, h5py
rep, runs = sys.argv[1], sys.argv[2]
rows = list(csv.DictReader(open(f"{rep}/summary.csv")))
assert [r["run"] for r in rows] == ["q1", "q2", "q4", "dense2"], [r["run"] for r in rows]
need = ["deck", "layout", "ranks", "prefill_tokens_per_s", "ttft_s", "tpot_s", "tpot_median_s", "decode_tokens_per_s",
        "mfu", "comm_fraction", "comm_exposed_s", "comm_hidden_s", "expert_imbalance", "peak_memory_bytes", "verification",
        "prefill_speedup", "decode_speedup", "tpot_reduction_pct"]
missing = [c for c in need if c not in rows[0]]
assert not missing, f"columns missing: {missing}"
for r in rows:
    with h5py.File(f"{runs}/{r['run']}.h5", "r") as f:
        s = f["summary"].attrs
        assert float(r["tpot_s"]) == s["tpot_s"], (r["run"], r["tpot_s"], s["tpot_s"])
        slowest = sorted(f["timing/decode_step_wall"][()].max(axis=0))
        steady = (slowest[(len(slowest) - 1) // 2] + slowest[len(slowest) // 2]) / 2
        assert abs(float(r["tpot_median_s"]) - steady) <= 1e-12 * steady, (r["run"], r["tpot_median_s"], slowest)
        assert float(r["prefill_tokens_per_s"]) == s["prefill_tokens_per_s"]
        assert r["layout"] == f.attrs["layout"] and int(r["ranks"]) == f.attrs["mpi_size"]
        hw = f["memory/bytes"][()][:, list(f["memory/kinds"].asstr()[()]).index("high_water")]
        assert int(r["peak_memory_bytes"]) == hw.max(), (r["peak_memory_bytes"], hw)
        assert r["verification"] == s["verification"] == "PASS"
assert rows[0]["deck"] == "quickstart" and rows[3]["deck"] == "tiny-dense", [r["deck"] for r in rows]
assert float(rows[0]["decode_speedup"]) == 1.0 and float(rows[0]["tpot_reduction_pct"]) == 0.0
assert rows[0]["mfu"] == "", "MFU must be empty where the peak is unknown"
assert rows[3]["expert_imbalance"] == "", "dense runs have no expert imbalance"
assert all(r["warmup"] == "1" for r in rows), [r["warmup"] for r in rows]
md = open(f"{rep}/summary.md").read()
for word in ("| run | deck | layout | ranks |", "TPOT", "TPOT reduction", "q4-phases.png", "comparison.png",
             "- timed: after 1 untimed warm-up pass", "| decode step: first / median | |"):
    assert word in md, word

def png_size(path):
    with open(path, "rb") as fh:
        head = fh.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", head[16:24])

pngs = [f"{r}-{k}.png" for r in ("q1", "q2", "q4", "dense2") for k in ("phases", "comm", "memory")]
pngs += ["q1-experts.png", "q2-experts.png", "q4-experts.png", "comparison.png"]
for p in pngs:
    w, h = png_size(f"{rep}/{p}")
    assert w >= 400 and h >= 200, (p, w, h)
import os
assert not os.path.exists(f"{rep}/dense2-experts.png"), "a dense run has no expert heatmap"
print("report ok:", len(rows), "rows,", len(pngs), "PNGs")
EOF
    ok "summary.md, summary.csv (4 rows, TPOT and baseline columns) and 16 plots" ;;

  report-refuses)
    need_runs
    rm -rf "$out/refused"
    expect 2 "incomplete" "complete = 0" -- "$report" "$runs/q1.h5" "$runs/incomplete.h5" --out "$out/refused"
    [ ! -e "$out/refused/summary.csv" ] || fail "a summary was written despite the incomplete file"
    expect 2 "not a readable HDF5" -- "$report" "$src/inputs/quickstart.toml" --out "$out/refused"
    expect 2 "no such file" -- "$report" "$runs/nothing.h5" --out "$out/refused"
    expect 2 "--out" -- "$report" "$runs/q1.h5"
    ok "incomplete, non-HDF5 and missing files and a missing --out are refused with exit code 2" ;;

  accept-pass)
    need_runs
    expect 0 "^verification  *\"PASS\"  *== \"PASS\"  *PASS$" "^tpot_s .* PASS$" "11 passed, 0 failed" -- \
      "$accept" "$runs/q4.h5" --reference "$src/inputs/acceptance/quickstart.toml"
    [ "$(tail -1 "$log")" = "PASS" ] || fail "the last line is not PASS"
    ok "the example reference passes the quickstart on 4 ranks, exit 0" ;;

  accept-fail)
    need_runs
    ref=$out/impossible.toml
    cat > "$ref" <<'EOF'
title = "one bound no run meets"
[checks]
verification = "PASS"
prefill_tokens_per_s = { target = 1e12, tolerance = 0.05 }
tpot_s = { max = 10.0 }
tpot_median_s = { max = 1e-12 }
EOF
    expect 1 "^prefill_tokens_per_s .*>= 0.95 x 1e+12 .*FAIL$" "^verification .*PASS$" "^tpot_s .*PASS$" \
      "^tpot_median_s .*<= 1e-12 .*FAIL$" "2 failed" -- "$accept" "$runs/q4.h5" --reference "$ref"
    [ "$(tail -1 "$log")" = "FAIL" ] || fail "the last line is not FAIL"
    # The example reference is for 4 ranks: the 2-rank run fails on layout and size.
    expect 1 "^layout .*\"dp=2\" .*FAIL$" "^mpi_size .*FAIL$" -- \
      "$accept" "$runs/q2.h5" --reference "$src/inputs/acceptance/quickstart.toml"
    expect 1 "incomplete" "^FAIL$" -- "$accept" "$runs/incomplete.h5" --reference "$ref"
    ok "failed bounds and an incomplete file give FAIL lines and exit 1" ;;

  accept-usage)
    need_runs
    bad=$out/bad-reference.toml
    printf '[checks]\ntpot = { max = 0.01 }\n' > "$bad"
    expect 2 "unknown figure 'tpot'" "tpot_s" -- "$accept" "$runs/q4.h5" --reference "$bad"
    printf 'tpot_s = { max = 0.01 }\n' > "$bad"
    expect 2 "checks go under" -- "$accept" "$runs/q4.h5" --reference "$bad"
    printf '[checks]\ntpot_s = { max = 0.01, maxx = 1 }\n' > "$bad"
    expect 2 "maxx" -- "$accept" "$runs/q4.h5" --reference "$bad"
    expect 2 "no such file" -- "$accept" "$runs/nothing.h5" --reference "$src/inputs/acceptance/quickstart.toml"
    expect 2 "cannot read reference" -- "$accept" "$runs/q4.h5" --reference "$out/nothing.toml"
    expect 2 "--reference" -- "$accept" "$runs/q4.h5"
    ok "bad references, missing files and bad usage give exit code 2" ;;

  predict-again)
    # predict-validation --predict-only on a stored run: tiny-1 measured once, the shipped CPU
    # machine file as its calibration; the cases without runs are skipped, not compared.
    dir=$out/predict-again
    rm -rf "$dir"; mkdir -p "$dir"
    cp "$src/inputs/machines/cpu-local.toml" "$dir/machine.toml"
    expect 0 "PERFORMANCE" -- "$mpiexec" -n 1 "$exe" run "$src/tests/decks/tiny-moe.toml" \
      --set workload.decode_steps=32 --set verify.mode=none --set output.file="$dir/tiny-1-run0.h5"
    again=(bash -c 'cd "$1" && MOEPROXY=$2 job-scripts/predict-validation --predict-only "$3"' _ "$src" "$exe" "$dir")
    expect 0 "case tiny-dp2: no runs" "Summary, at most one rank per core" "wrote $dir/repredicted.md" -- "${again[@]}"
    grep -q "^## tiny-1 (1 ranks)" "$dir/repredicted.md" || fail "no tiny-1 table in $dir/repredicted.md"
    grep -Eq "^\| decode \| wall \| [0-9.e-]+ \| [0-9.e-]+ \| [+-][0-9]+% \|" "$dir/repredicted.md" \
      || fail "no decode wall compared in $dir/repredicted.md"
    [ "$(grep -c '^## ' "$dir/repredicted.md")" -eq 1 ] || fail "cases without runs were compared"
    # The steady cases: those whose probe before them (validation.md) ran within 10% of the
    # probe after calibrating; tiny-1's core 0 at +5% prefill and -8% decode, then at +12%.
    probed() {
      printf '## tiny-1 (1 ranks) \n\nPrefill walls of the 1 runs: 0.001 s; the probe before them (medium deck on one rank, prefill,decode per core): %s s\n' "$1"
      printf '\nDrift check, prefill: the medium deck on one rank took 0.0700 s after calibrating and more.\n'
      printf '\nDrift check, decode: the medium deck on one rank took 0.0250 s after calibrating and more.\n'
    }
    probed "0.0735,0.0230 0.0900,0.0400" > "$dir/validation.md"
    expect 0 "Summary, steady cases (tiny-1): " -- "${again[@]}"
    probed "0.0784,0.0250 0.0700,0.0250" > "$dir/validation.md"
    expect 0 "Summary, steady cases (none): 0 of 0 rows" -- "${again[@]}"
    rm "$dir/machine.toml"
    expect 2 "no $dir/machine.toml" -- "${again[@]}"
    ;;
  compare)
    need_runs
    compare=$src/analysis/moeproxy-compare
    "$exe" predict "$src/inputs/quickstart.toml" --set parallel.dp=1 --ranks 1 --machine "$src/inputs/machines/cpu-local.toml" \
      --out "$out/q1-predicted.h5" > "$log" 2>&1 || fail "predict refused the quickstart"
    "$py" "$compare" "$runs/q1.h5" "$out/q1-predicted.h5" --repeats "$runs/q1.h5" "$runs/q2.h5" "$runs/q4.h5" \
      --median > "$out/compare-median.md" || fail "compare --median failed"
    "$py" "$compare" "$runs/q1.h5" "$out/q1-predicted.h5" > "$out/compare-one.md" || fail "compare failed"
    # The measured column against figures computed here from the files: one run's, or the
    # median of three runs' row by row (q1 given twice counts once).
    $py - "$out" "$runs" >> "$log" 2>&1 <<'EOF' || fail "compare's measured figures"
import sys, h5py, numpy as np
out, runs = sys.argv[1], sys.argv[2]
def rows(path):
    table = {}
    for line in open(path):
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0] in ("prefill", "decode"):
            table[(cells[0], cells[1])] = float(cells[2])
    return table
def measured(name, stage, phase):
    with h5py.File(f"{runs}/{name}.h5", "r") as f:
        if phase == "wall":
            return float(np.max(f[f"timing/{stage}_wall"][()]))
        names = list(f["timing/phases"].asstr()[()])
        return float(f[f"timing/{stage}"][()].sum(axis=1).mean(axis=0)[names.index(phase)])
one, med = rows(f"{out}/compare-one.md"), rows(f"{out}/compare-median.md")
assert ("prefill", "wall") in one and ("decode", "wall") in med, (one, med)
for (stage, phase), got in one.items():
    assert abs(got - measured("q1", stage, phase)) <= 0.005 * got, (stage, phase, got)
for (stage, phase), got in med.items():
    want = float(np.median([measured(n, stage, phase) for n in ("q1", "q2", "q4")]))
    assert abs(got - want) <= 0.005 * want, (stage, phase, got, want)
print("compare: %d rows of one run, %d medians of three" % (len(one), len(med)))
EOF
    expect 2 "needs --repeats" -- "$py" "$compare" "$runs/q1.h5" "$out/q1-predicted.h5" --median
    expect 1 "measured file first" -- "$py" "$compare" "$out/q1-predicted.h5" "$runs/q1.h5"
    ok "moeproxy-compare: one run's figures, or each row's median over the runs" ;;

  job-scripts-parse)
    n=0
    while IFS= read -r f; do
      first=$(head -c 200 "$f" | head -1)
      case $f in
        *.md) continue ;;
        *.toml) $py -c 'import sys, tomllib; tomllib.load(open(sys.argv[1], "rb"))' "$f" > "$log" 2>&1 \
                  || fail "$f is not valid TOML" ;;
        *)
          [ -x "$f" ] || fail "$f is not executable"
          case $first in
            *python3*) $py -c 'import ast, sys; ast.parse(open(sys.argv[1]).read(), sys.argv[1])' "$f" > "$log" 2>&1 \
                         || fail "$f does not compile" ;;
            *bash*|*/sh*) bash -n "$f" > "$log" 2>&1 || fail "$f does not parse (bash -n)" ;;
            *) fail "$f: unknown kind of script (first line: $first)" ;;
          esac ;;
      esac
      n=$((n + 1))
    done < <(find "$src/job-scripts" "$src/analysis" "$src/tests/analysis" -type f \
               ! -name '*.pyc' ! -path '*/__pycache__/*' ! -name '*.cmake' ! -name '*.py' | sort)
    $py -c 'import sys; [compile(open(f).read(), f, "exec") for f in sys.argv[1:]]' \
      "$src"/analysis/moeproxy_analysis/*.py > "$log" 2>&1 || fail "analysis package does not compile"
    [ "$n" -ge 6 ] || fail "only $n files checked"
    ok "$n scripts and specs parse, and the analysis package compiles" ;;

  seed-scripts)
    # Every seed experiment's script names each of its decks once, sized from the deck.
    cd "$src"
    for script in job-scripts/seeds/seed[0-9]*; do
      seed=$(basename "$script")
      "$script" --dry-run > "$log" 2>&1 || { cat "$log"; fail "$script --dry-run failed"; }
      for deck in inputs/seeds/"$seed"-*.toml; do
        ranks=$(sed -n 's/^# ranks: *\([0-9][0-9]*\).*/\1/p' "$deck" | head -n 1)
        [ "$(grep -c "run.sbatch $deck\$" "$log")" -eq 1 ] || fail "$script does not submit $deck once"
        grep -q "$deck on $ranks ranks" "$log" || fail "$script does not size $deck for $ranks ranks"
      done
      grep -q "moeproxy-report .*--baseline results/seeds/$seed-baseline" "$log" || fail "$script has no report with a baseline"
    done
    ok "each seed script submits its decks and a report" ;;

  seed-predictions)
    # Every seed deck is predicted, and docs/seed-reproduction.md's table of all predictions
    # is what the current model gives: a model change that moves a figure fails here until
    # the document is regenerated (the command is in the document).
    cd "$src"
    MOEPROXY=$exe job-scripts/seed-predictions > "$out/seed-predictions.md" 2> "$log" || { cat "$log"; fail "seed-predictions failed"; }
    for deck in inputs/seeds/*.toml; do
      grep -q "^| $(basename "$deck" .toml) |" "$out/seed-predictions.md" || fail "$deck is not predicted"
    done
    sed -n '/^## All predictions/,/^## /p' docs/seed-reproduction.md | grep '^| ' > "$out/seed-documented.md"
    [ -s "$out/seed-documented.md" ] || fail "docs/seed-reproduction.md has no table under '## All predictions'"
    diff "$out/seed-documented.md" "$out/seed-predictions.md" > "$log" \
      || { cat "$log"; fail "docs/seed-reproduction.md's predictions differ from job-scripts/seed-predictions (< document, > model)"; }
    ok "$(($(wc -l < "$out/seed-predictions.md") - 2)) predictions, as documented" ;;

  sweep)
    d=$out/sweep
    rm -rf "$d"; mkdir -p "$d"
    spec=$d/spec.toml
    write_spec() {
      cat > "$spec" <<EOF
deck = "$src/inputs/quickstart.toml"
name = "ctest-sweep"
[set]
"workload.decode_steps" = $1
[grid]
"parallel.dp" = [1, 2]
[slurm]
launcher = "$mpiexec"
time = "00:05:00"
env = { OMP_NUM_THREADS = "1", OMP_PROC_BIND = "false" }
EOF
    }
    write_spec 4
    expect 0 "2 points" "0 complete (skipped), 2 to run" -- "$sweep" "$spec" --out "$d/out" --moeproxy "$exe"
    grep -q '^#SBATCH --array=0-1$' "$d/out/sweep.sbatch" || fail "array is not 0-1"
    grep -q '^#SBATCH --ntasks=2$' "$d/out/sweep.sbatch" || fail "the array does not allocate the largest point's 2 ranks"
    bash -n "$d/out/sweep.sbatch" || fail "sweep.sbatch does not parse"
    $py - "$d/out" <<'EOF' > "$log" 2>&1 || fail "the point decks are not the base deck plus the overrides"
import sys, tomllib
d = sys.argv[1]
for name, dp in (("p000-dp1", 1), ("p001-dp2", 2)):
    deck = tomllib.load(open(f"{d}/decks/{name}.toml", "rb"))
    assert deck["parallel"]["dp"] == dp and deck["workload"]["decode_steps"] == 4, deck
    assert deck["model"]["experts"] == 8 and deck["output"]["file"] == f"results/{name}.h5", deck
EOF
    # Point 0 run as its array task would, without Slurm.
    SLURM_ARRAY_TASK_ID=0 bash "$d/out/sweep.sbatch" > "$log" 2>&1 || fail "array task 0 failed"
    grep -q '^PASS$' "$log" || fail "array task 0 did not PASS"
    expect 0 "p000-dp1 .*complete" "1 complete (skipped), 1 to run" -- "$sweep" "$spec" --out "$d/out" --moeproxy "$exe"
    grep -q '^#SBATCH --array=1$' "$d/out/sweep.sbatch" || fail "the complete point 0 is still in the array"
    expect 0 "point 0 (p000-dp1): results/p000-dp1.h5 is complete, skipped" -- \
      env SLURM_ARRAY_TASK_ID=0 bash "$d/out/sweep.sbatch"
    # A changed spec makes the old result stale: it is run again, not trusted.
    write_spec 5
    expect 0 "p000-dp1 .*stale" "0 complete (skipped), 2 to run" -- "$sweep" "$spec" --out "$d/out" --moeproxy "$exe"
    write_spec 4
    expect 0 "1 complete (skipped)" -- "$sweep" "$spec" --out "$d/out" --moeproxy "$exe"
    # Points moeproxy would reject are refused before anything is queued.
    printf 'deck = "%s"\n[grid]\nranks = [3]\n' "$src/inputs/quickstart.toml" > "$d/bad.toml"
    expect 2 "point 0" "invalid" -- "$sweep" "$d/bad.toml" --out "$d/bad" --moeproxy "$exe"
    printf 'deck = "%s"\n[grid]\n"output.file" = ["x.h5"]\n' "$src/inputs/quickstart.toml" > "$d/bad.toml"
    expect 2 "output.file is chosen by the sweep" -- "$sweep" "$d/bad.toml" --out "$d/bad" --moeproxy "$exe"
    ok "2 points expanded; a complete point is skipped, a stale one rerun, bad points refused" ;;

  *) echo "unknown case $case_name"; exit 2 ;;
esac
