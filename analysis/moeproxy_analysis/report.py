"""moeproxy-report: summary table (Markdown and CSV) and plots of one or more result files."""

import argparse
import csv
import os
import re
import sys

import numpy as np

from . import results
from .units import fmt_bytes, fmt_fraction, fmt_number, fmt_rate, fmt_time

# The CSV's columns, in order: (column, unit, meaning). docs/analysis.md repeats this table.
COLUMNS = [
    ("run", "", "short name of the result file (its stem, made unique)"),
    ("file", "", "path of the result file as given"),
    ("deck", "", "deck file stem from the stored command line"),
    ("layout", "", "rank layout, e.g. dp=4"),
    ("ranks", "ranks", "MPI ranks (mpi_size)"),
    ("predicted", "", "1 for moeproxy predict output"),
    ("warmup", "passes", "untimed warm-up passes before the timed ones; empty for files from before the key"),
    ("prefill_tokens_per_s", "tokens/s", "prompt tokens / prefill wall time"),
    ("ttft_s", "s", "time to first token"),
    ("tpot_s", "s", "decode wall time / decode steps"),
    ("tpot_median_s", "s", "median decode step of the slowest rank; empty for files without step walls"),
    ("decode_tokens_per_s", "tokens/s", "batch x decode steps / decode wall time"),
    ("mfu", "fraction", "model FLOP/s / peak FLOP/s; empty where the peak is unknown"),
    ("comm_fraction", "fraction", "communication not hidden by compute / wall time"),
    ("comm_seconds_raw", "s", "communication time, summed without regard to overlap"),
    ("comm_exposed_s", "s", "communication the ranks waited for, summed over ranks"),
    ("comm_hidden_s", "s", "asynchronous transfers in flight while the ranks computed, summed over ranks"),
    ("expert_imbalance", "1", "(max - mean) / mean tokens per expert; empty for dense models"),
    ("peak_memory_bytes", "bytes", "largest per-rank peak (high-water mark, else sum of kinds)"),
    ("verification", "", "PASS, FAIL or SKIPPED"),
    ("max_rel_error", "1", "largest relative error against the reference"),
    ("comm_compression", "", "parallel.comm_compression: none or int8"),
    ("comm_bytes_saved", "bytes", "bytes compression kept off the network, all ranks (/comm)"),
]
BASELINE_COLUMNS = [
    ("baseline", "", "run the improvement columns compare with"),
    ("prefill_speedup", "x", "prefill tokens/s / baseline's"),
    ("decode_speedup", "x", "decode tokens/s / baseline's"),
    ("ttft_reduction_pct", "%", "(baseline TTFT - TTFT) / baseline TTFT x 100"),
    ("tpot_reduction_pct", "%", "(baseline TPOT - TPOT) / baseline TPOT x 100"),
]


class UsageError(Exception):
    pass


def _unique_labels(paths):
    stems = [os.path.splitext(os.path.basename(p))[0] for p in paths]
    stems = [re.sub(r"[^A-Za-z0-9_.+=-]", "_", s) or "run" for s in stems]
    out, seen = [], {}
    for s in stems:
        n = seen.get(s, 0)
        seen[s] = n + 1
        out.append(s if n == 0 else f"{s}-{n + 1}")
    return out


def _float(x):
    try:
        return float(x)
    except (TypeError, ValueError):
        return float("nan")


def _exposed_hidden(s):
    """Files from before the split counted only exposed communication (comm_seconds_raw)."""
    if "comm_exposed_s" in s:
        return {"comm_exposed_s": _float(s["comm_exposed_s"]), "comm_hidden_s": _float(s["comm_hidden_s"])}
    return {"comm_exposed_s": _float(s.get("comm_seconds_raw")), "comm_hidden_s": 0.0}


def row(run, baseline=None):
    s = run.summary
    r = {
        "run": run.label,
        "file": run.path,
        "deck": run.deck_name,
        "layout": run.layout,
        "ranks": run.ranks,
        "predicted": int(run.predicted),
        "warmup": int(run.attrs["warmup"]) if "warmup" in run.attrs else None,
        "prefill_tokens_per_s": _float(s.get("prefill_tokens_per_s")),
        "ttft_s": _float(s.get("ttft_s")),
        "tpot_s": _float(s.get("tpot_s")),
        "tpot_median_s": run.derived.get("tpot_median_s"),
        "decode_tokens_per_s": _float(s.get("decode_tokens_per_s")),
        "mfu": results.mfu_or_none(run),
        "comm_fraction": _float(s.get("comm_fraction")),
        "comm_seconds_raw": _float(s.get("comm_seconds_raw")),
        **_exposed_hidden(s),
        "expert_imbalance": _float(s.get("expert_imbalance")) if run.expert_tokens is not None else None,
        "peak_memory_bytes": int(run.derived["peak_memory_bytes"]),
        "verification": str(s.get("verification", "?")),
        "max_rel_error": _float(s.get("max_rel_error")),
        "comm_compression": str(s.get("comm_compression", "none")),
        "comm_bytes_saved": int(run.derived["comm_bytes_saved"]),
    }
    if baseline is not None:
        b = baseline.summary

        def ratio(key):
            den = _float(b.get(key))
            return _float(s.get(key)) / den if den > 0 else None

        def reduction(key):
            den = _float(b.get(key))
            return (den - _float(s.get(key))) / den * 100.0 if den > 0 else None

        r.update({
            "baseline": baseline.label,
            "prefill_speedup": ratio("prefill_tokens_per_s"),
            "decode_speedup": ratio("decode_tokens_per_s"),
            "ttft_reduction_pct": reduction("ttft_s"),
            "tpot_reduction_pct": reduction("tpot_s"),
        })
    return r


def _csv_value(v):
    # Empty means "not applicable", so spreadsheets and pandas read it as missing.
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return ""
    if isinstance(v, float):
        return repr(v)
    return v


def _timed(run):
    """Which passes a run's figures are from (workload.warmup, root attribute warmup)."""
    if run.predicted:
        return "modelled warm passes"
    if "warmup" not in run.attrs:
        return "the first, cold pass (written before workload.warmup existed)"
    n = int(run.attrs["warmup"])
    return "the first, cold pass (warmup = 0)" if n == 0 else f"after {n} untimed warm-up pass" + ("es" if n > 1 else "")


def write_csv(path, rows, with_baseline):
    cols = [c for c, _, _ in COLUMNS] + ([c for c, _, _ in BASELINE_COLUMNS] if with_baseline else [])
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(cols)
        for r in rows:
            w.writerow([_csv_value(r.get(c)) for c in cols])


def _failover_lines(run):
    """The failover drill of a run (/failover), stated as the drill it was."""
    f = run.failover
    if f is None:
        return []
    before = _float(f.get("decode_tokens_per_s_before"))
    return [f"- failover drill: rank {f.get('fail_rank')} failed before decode step {f.get('fail_step')}; "
            f"rank {f.get('takeover_rank')} (its replica) took over {f.get('sequences')} sequences; "
            f"recovery {fmt_time(_float(f.get('recovery_s')))} (failure to serving again: the taken-over "
            f"sequences' KV cache rebuilt); decode "
            + (f"{fmt_rate(before)} before, " if before > 0 else "no step before the failure, ")
            + f"{fmt_rate(_float(f.get('decode_tokens_per_s_after')))} after the recovery",
            "- this was a drill inside a healthy MPI job: the failed rank's process was not killed "
            "(docs/reliability.md covers real crashes, which end the job)",
            ""]


def _md_escape(text):
    return str(text).replace("|", "\\|")


def _verdict(r):
    v = r["verification"]
    return f"**{v}**" if v != "PASS" else v


def _speedup(x):
    return "n/a" if x is None else f"{x:.2f}x"


def _pct(x):
    return "n/a" if x is None else f"{x:+.1f} %"


def _phase_table(run):
    """Slowest rank's time per phase, so the biggest costs can be read without the plot."""
    pre = run.prefill.sum(axis=1).max(axis=0)
    dec = run.decode.sum(axis=1).max(axis=0)
    order = sorted(range(len(run.phases)), key=lambda i: -(pre[i] + dec[i]))
    lines = ["| phase | prefill (slowest rank) | decode (slowest rank) |", "| --- | ---: | ---: |"]
    for i in order:
        if pre[i] == 0 and dec[i] == 0:
            continue
        lines.append(f"| {run.phases[i]} | {fmt_time(pre[i])} | {fmt_time(dec[i])} |")
    lines.append(f"| **wall** | {fmt_time(run.prefill_wall.max())} | {fmt_time(run.decode_wall.max())} |")
    if "tpot_median_s" in run.derived:
        # The first steps after a prefill can take twice the steady one: the median step is
        # the steady TPOT, the first shows the transient.
        first = run.decode_step_wall.max(axis=0)[0]
        lines.append(f"| decode step: first / median | | {fmt_time(first)} / {fmt_time(run.derived['tpot_median_s'])} |")
    return lines


def _balance_section(b):
    """The attention/FFN balancing of a separated run: each check, each trial, the suggestion."""
    a, c, t = b["attrs"], b["checks"], b["trials"]
    out = [f"Balancing (threshold {fmt_number(_float(a.get('threshold')))}, every {a.get('interval')} decode "
           "steps; busy = compute per decode step, busiest rank of the side; "
           "imbalance = (busier - idler) / busier):", "",
           "| after step | micro-batches | attention busy | FFN busy | imbalance | step | action |",
           "| ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for i in range(len(c["step"])):
        action = c["action"][i]
        if c["next_micro_batches"][i] != c["micro_batches"][i]:
            action += f" (-> {c['next_micro_batches'][i]})"
        out.append(f"| {c['step'][i]} | {c['micro_batches'][i]} | {fmt_time(c['attention_busy'][i])} | "
                   f"{fmt_time(c['ffn_busy'][i])} | {fmt_number(c['imbalance'][i])} | "
                   f"{fmt_time(c['step_seconds'][i])} | {action} |")
    out.append("")
    for i in range(len(t["step"])):
        after = ("not judged (the run ended first)" if t["verdict"][i] == "unjudged" else
                 f"imbalance {fmt_number(t['imbalance_before'][i])} -> {fmt_number(t['imbalance_after'][i])}, "
                 f"step {fmt_time(t['step_seconds_before'][i])} -> {fmt_time(t['step_seconds_after'][i])}: "
                 f"{t['verdict'][i]}")
        out.append(f"- trial at step {t['step'][i]}: micro-batches {t['from_micro_batches'][i]} -> "
                   f"{t['to_micro_batches'][i]}, {after}")
    if int(a.get("suggested_attn_ranks", 0)) > 0:
        out.append(f"- suggested split (performance model, {a.get('machine')}): attn_ranks = "
                   f"{a.get('suggested_attn_ranks')}, predicted TPOT {fmt_time(_float(a.get('suggested_tpot_s')))} "
                   f"against {fmt_time(_float(a.get('current_tpot_s')))} for attn_ranks = {a.get('current_attn_ranks')}")
    else:
        out.append(f"- suggested split: none ({a.get('note', '')})")
    return out + [""]


def _ranks(n):
    return f"{n} rank" if n == 1 else f"{n} ranks"


def _unique(values):
    seen = []
    for v in values:
        if v not in seen:
            seen.append(v)
    return ", ".join(seen) if seen else "n/a"


def write_markdown(path, runs, rows, baseline, figures, comparison_png):
    head = ["run", "deck", "layout", "ranks", "prefill tok/s", "TTFT", "TPOT", "decode tok/s",
            "MFU", "comm fraction", "expert imbalance", "peak memory / rank", "verdict"]
    if baseline is not None:
        head += ["prefill x", "decode x", "TTFT reduction", "TPOT reduction"]
    out = ["# moeproxy report", "",
           f"{len(runs)} result file(s). Definitions: README.md, \"Definitions\"; "
           "columns and units: docs/analysis.md. Times are the slowest rank's.", ""]
    if baseline is not None:
        out += [f"Improvements are relative to the baseline **{baseline.label}** "
                f"({baseline.layout}, {_ranks(baseline.ranks)}, `{baseline.path}`).", ""]
    out += ["| " + " | ".join(head) + " |", "|" + "|".join(" --- " for _ in head) + "|"]
    for r in rows:
        cells = [r["run"], r["deck"], r["layout"], str(r["ranks"]),
                 fmt_rate(r["prefill_tokens_per_s"]), fmt_time(r["ttft_s"]), fmt_time(r["tpot_s"]),
                 fmt_rate(r["decode_tokens_per_s"]),
                 fmt_fraction(r["mfu"]) if r["mfu"] is not None else "n/a",
                 fmt_fraction(r["comm_fraction"]),
                 fmt_number(r["expert_imbalance"]) if r["expert_imbalance"] is not None else "n/a",
                 fmt_bytes(r["peak_memory_bytes"]), _verdict(r) + (" (predicted)" if r["predicted"] else "")]
        if baseline is not None:
            cells += [_speedup(r["prefill_speedup"]), _speedup(r["decode_speedup"]),
                      _pct(r["ttft_reduction_pct"]), _pct(r["tpot_reduction_pct"])]
        out.append("| " + " | ".join(_md_escape(c) for c in cells) + " |")
    out.append("")
    if any(r["mfu"] is None for r in rows):
        out += ["MFU is n/a where the device peak is unknown (CPU runs).", ""]
    if comparison_png:
        out += ["## Comparison", "", f"![throughput and latency of every run]({comparison_png})", ""]
    out += ["## Runs", ""]
    for run, r in zip(runs, rows):
        s = run.summary
        out += [f"### {run.label}", "",
                f"- file: `{run.path}`",
                f"- deck: {run.deck_name}" + (f" ({_md_escape(run.description)})" if run.description else ""),
                f"- layout: {run.layout}, {_ranks(run.ranks)}" + (", **predicted** (not measured)" if run.predicted else ""),
                f"- timed: {_timed(run)}",
                f"- hosts: {_unique(run.hosts)}; devices: {_unique(run.devices)}",
                f"- moeproxy {run.attrs.get('app_version', '?')}, git {run.attrs.get('git_sha', '?')}",
                f"- verification: {r['verification']}, max relative error {fmt_number(r['max_rel_error'])} "
                f"(tolerance {fmt_number(_float(s.get('tolerance')))}); {s.get('verification_note', '')}",
                f"- communication: {fmt_time(r['comm_exposed_s'])} exposed, {fmt_time(r['comm_hidden_s'])} "
                f"hidden behind compute (summed over ranks); whole run (/comm): "
                f"{fmt_bytes(run.derived['comm_bytes_total'])} over {len(run.comm_keys)} keys",
                f"- compression: {r['comm_compression']}; {fmt_bytes(r['comm_bytes_saved'])} saved of "
                f"{fmt_bytes(run.derived['comm_bytes_uncompressed_total'])} uncompressed"
                + (f" (tolerance includes {fmt_number(_float(s.get('compression_tolerance')))} for it)"
                   if _float(s.get("compression_tolerance")) > 0 else ""),
                ""]
        out += _failover_lines(run)
        out += _phase_table(run) + [""]
        if run.balance is not None:
            out += _balance_section(run.balance)
        for kind, name in figures[run.label]:
            out += [f"![{kind} of {run.label}]({name})", ""]
    with open(path, "w") as fh:
        fh.write("\n".join(out))


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="moeproxy-report",
        description="Summarise moeproxy result files: DIR/summary.md, DIR/summary.csv and PNG plots "
                    "(per-rank phase bars, expert load, communication, memory, and a comparison "
                    "of all runs).",
        epilog="Exit codes: 0 written; 2 bad usage or a file that is missing, not a moeproxy "
               "result, of another schema version, or incomplete (complete != 1).")
    p.add_argument("files", nargs="+", metavar="FILE", help="moeproxy result files (.h5)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created if missing)")
    p.add_argument("--baseline", metavar="FILE",
                   help="result file the improvement columns compare with (need not be among FILEs)")
    p.add_argument("--no-plots", action="store_true", help="tables only")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        labels = _unique_labels(args.files)
        runs = [results.load(p, lab) for p, lab in zip(args.files, labels)]
        baseline = None
        if args.baseline:
            same = [r for r in runs if os.path.exists(args.baseline) and os.path.samefile(r.path, args.baseline)]
            baseline = same[0] if same else results.load(args.baseline)
    except results.ResultsError as e:
        print(f"moeproxy-report: error: {e}", file=sys.stderr)
        return 2
    try:
        os.makedirs(args.out, exist_ok=True)
    except OSError as e:
        print(f"moeproxy-report: error: cannot create {args.out}: {e}", file=sys.stderr)
        return 2
    rows = [row(r, baseline) for r in runs]
    figures = {r.label: [] for r in runs}
    comparison_png = None
    if not args.no_plots:
        from . import plots
        for r in runs:
            for kind, fn in (("time per phase and rank", plots.phases), ("expert load", plots.experts),
                             ("communication", plots.comm), ("memory per rank", plots.memory)):
                name = fn(r, args.out)
                if name:
                    figures[r.label].append((kind, name))
        if len(runs) > 1:
            comparison_png = plots.comparison(runs, args.out, baseline)
    write_csv(os.path.join(args.out, "summary.csv"), rows, baseline is not None)
    write_markdown(os.path.join(args.out, "summary.md"), runs, rows, baseline, figures, comparison_png)
    n_png = sum(len(v) for v in figures.values()) + (1 if comparison_png else 0)
    print(f"moeproxy-report: {len(runs)} run(s) -> {args.out}/summary.md, summary.csv, {n_png} PNG file(s)")
    return 0
