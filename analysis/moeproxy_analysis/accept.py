"""moeproxy-accept: judge one result file against a reference TOML of bounds.

Reference format (docs/analysis.md has the full description):

    title = "quickstart on 4 CPU ranks"           # optional, printed in the header

    [checks]                                      # run in file order
    verification = "PASS"                         # equality: string, integer, boolean
    prefill_tokens_per_s = { min = 1000 }
    tpot_s = { max = 0.01 }
    decode_tokens_per_s = { target = 180000, tolerance = 0.05 }   # >= 0.95 x target
    layout = { one_of = ["dp=4", "tp=4"] }

The checks live in their own table because in TOML every key after a table header
belongs to that table: a flat file with a metadata table would swallow the checks.
"""

import argparse
import math
import sys

from . import results

# Which way "within tolerance of a target" goes; other metrics need `better = ...`.
HIGHER_IS_BETTER = {"prefill_tokens_per_s", "decode_tokens_per_s", "mfu"}
LOWER_IS_BETTER = {"ttft_s", "tpot_s", "tpot_median_s", "comm_fraction", "comm_seconds_raw", "comm_exposed_s", "expert_imbalance",
                   "max_rel_error", "dropped_tokens", "peak_memory_bytes", "prefill_wall_max_s",
                   "decode_wall_max_s", "comm_bytes_total"}
TABLE_KEYS = {"min", "max", "target", "tolerance", "better", "equals", "one_of"}


class ReferenceError(Exception):
    """The reference file itself is wrong (exit code 2, like bad usage)."""


def _num(x):
    return f"{x:.6g}" if isinstance(x, float) else str(x)


def _show(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    return f'"{v}"' if isinstance(v, str) else _num(v)


def _is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


class Check:
    """One line of the reference, parsed and validated before anything is measured."""

    def __init__(self, name, spec, known_names):
        self.name = name
        if name not in known_names:
            raise ReferenceError(
                f"unknown figure '{name}'; valid names: {', '.join(sorted(known_names))}")
        self.lo = self.hi = None
        self.allowed = None
        self.bound = ""
        if isinstance(spec, dict):
            self._table(spec)
        elif isinstance(spec, float):
            raise ReferenceError(
                f"{name} = {spec}: a bare float would need exact equality; write "
                f"{{ min = ... }}, {{ max = ... }} or {{ target = ..., tolerance = ... }}")
        elif isinstance(spec, (str, int, bool)):
            self.allowed = [spec]
            self.bound = f"== {_show(spec)}"
        else:
            raise ReferenceError(f"{name}: expected a value or an inline table, got {type(spec).__name__}")

    def _table(self, spec):
        name = self.name
        unknown = set(spec) - TABLE_KEYS
        if unknown:
            raise ReferenceError(f"{name}: unknown key(s) {', '.join(sorted(unknown))}; "
                                 f"valid: {', '.join(sorted(TABLE_KEYS))}")
        if "equals" in spec or "one_of" in spec:
            if set(spec) - {"equals", "one_of"}:
                raise ReferenceError(f"{name}: equals / one_of cannot be combined with bounds")
            allowed = [spec["equals"]] if "equals" in spec else spec["one_of"]
            if not isinstance(allowed, list) or not allowed:
                raise ReferenceError(f"{name}: one_of needs a non-empty list")
            self.allowed = allowed
            self.bound = f"== {_show(allowed[0])}" if len(allowed) == 1 else \
                "one of " + ", ".join(_show(a) for a in allowed)
            return
        for k in ("min", "max", "target", "tolerance"):
            if k in spec and (not _is_number(spec[k]) or not math.isfinite(spec[k])):
                raise ReferenceError(f"{name}: {k} must be a finite number, got {spec[k]!r}")
        if "target" in spec:
            if "min" in spec or "max" in spec:
                raise ReferenceError(f"{name}: use either target/tolerance or min/max, not both")
            better = spec.get("better")
            if better is None:
                better = "higher" if name in HIGHER_IS_BETTER else "lower" if name in LOWER_IS_BETTER else None
            if better not in ("higher", "lower"):
                raise ReferenceError(f'{name}: say which way is better: better = "higher" or "lower"')
            tol = spec.get("tolerance", 0.0)
            if not 0 <= tol < 1:
                raise ReferenceError(f"{name}: tolerance is a fraction of the target, 0 <= tolerance < 1; got {tol}")
            t = spec["target"]
            if better == "higher":
                self.lo = (1 - tol) * t
                self.bound = f">= {1 - tol:.4g} x {_num(t)} = {_num(self.lo)}"
            else:
                self.hi = (1 + tol) * t
                self.bound = f"<= {1 + tol:.4g} x {_num(t)} = {_num(self.hi)}"
            return
        if "tolerance" in spec or "better" in spec:
            raise ReferenceError(f"{name}: tolerance and better only go with target")
        if "min" not in spec and "max" not in spec:
            raise ReferenceError(f"{name}: the table needs min, max, target, equals or one_of")
        self.lo, self.hi = spec.get("min"), spec.get("max")
        if self.lo is not None and self.hi is not None:
            if self.lo > self.hi:
                raise ReferenceError(f"{name}: min {self.lo} > max {self.hi}")
            self.bound = f"between {_num(self.lo)} and {_num(self.hi)}"
        else:
            self.bound = f">= {_num(self.lo)}" if self.lo is not None else f"<= {_num(self.hi)}"

    def judge(self, run):
        """(measured text, passed)"""
        try:
            v = run.metric(self.name)
        except KeyError:
            return "missing", False
        if self.name == "mfu" and results.mfu_or_none(run) is None:
            return "n/a (peak unknown)", False
        if self.allowed is not None:
            # int32 flags such as `predicted` compare equal to TOML booleans, as intended
            return _show(v), any(v == a for a in self.allowed)
        if not _is_number(v):
            return _show(v), False
        if isinstance(v, float) and math.isnan(v):
            return "nan", False
        ok = (self.lo is None or v >= self.lo) and (self.hi is None or v <= self.hi)
        return _num(v), ok


def load_reference(path):
    import tomllib
    try:
        with open(path, "rb") as fh:
            ref = tomllib.load(fh)
    except OSError as e:
        raise ReferenceError(f"cannot read reference {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ReferenceError(f"{path}: invalid TOML: {e}") from None
    checks = ref.pop("checks", None)
    stray = [k for k in ref if k not in ("title", "note")]
    if stray:
        raise ReferenceError(f"{path}: unknown top-level key(s) {', '.join(stray)}; checks go under "
                             f"[checks], beside them only title and note")
    if not isinstance(checks, dict) or not checks:
        raise ReferenceError(f"{path}: no checks; write them under [checks], e.g. tpot_s = {{ max = 0.01 }}")
    meta = ref
    return meta, checks


# Figures a reference may name even when a particular file lacks them (e.g. dense runs
# have no expert token counts); a name outside this set and the file is a typo.
KNOWN = {"prefill_tokens_per_s", "ttft_s", "tpot_s", "tpot_median_s", "decode_tokens_per_s", "mfu", "peak_flops",
         "comm_fraction", "comm_seconds_raw", "comm_exposed_s", "comm_hidden_s", "expert_imbalance",
         "dropped_tokens", "verification",
         "max_rel_error", "tolerance", "verification_note", "layout", "mpi_size", "ranks",
         "predicted", "warmup", "schema_version", "app_version", "git_sha", "command_line", "complete",
         "deck_name", "peak_memory_bytes", "prefill_wall_max_s", "decode_wall_max_s",
         "comm_bytes_total", "expert_tokens_min", "expert_tokens_max", "expert_tokens_std"}


def main(argv=None):
    p = argparse.ArgumentParser(
        prog="moeproxy-accept",
        description="Check a moeproxy result file against reference values and tolerances.",
        epilog="Exit codes: 0 every check passed; 1 a check failed or the file is incomplete; "
               "2 bad usage, an unreadable file or a bad reference.")
    p.add_argument("file", metavar="FILE", help="moeproxy result file (.h5)")
    p.add_argument("--reference", required=True, metavar="REF.toml", help="the bounds (docs/analysis.md)")
    try:
        args = p.parse_args(argv)
    except SystemExit as e:
        return 0 if e.code == 0 else 2
    try:
        meta, spec = load_reference(args.reference)
    except ReferenceError as e:
        print(f"moeproxy-accept: error: {e}", file=sys.stderr)
        return 2
    try:
        run = results.load(args.file)
    except results.IncompleteError as e:
        # A run that did not finish writing its result cannot be accepted: a FAIL, not a
        # usage error, so suites that only look at the exit code count it as failed.
        print(f"moeproxy-accept: {e}")
        print("FAIL")
        return 1
    except results.ResultsError as e:
        print(f"moeproxy-accept: error: {e}", file=sys.stderr)
        return 2
    try:
        checks = [Check(name, s, KNOWN | set(run.metric_names())) for name, s in spec.items()]
    except ReferenceError as e:
        print(f"moeproxy-accept: error: {args.reference}: {e}", file=sys.stderr)
        return 2
    title = meta.get("title", "")
    print(f"moeproxy-accept: {args.file} ({run.deck_name}, {run.layout}, {run.ranks} ranks) "
          f"against {args.reference}" + (f": {title}" if title else ""))
    rows = [(c.name, *c.judge(run), c.bound) for c in checks]
    w_name = max(len("check"), *(len(r[0]) for r in rows))
    w_meas = max(len("measured"), *(len(r[1]) for r in rows))
    w_bound = max(len("bound"), *(len(r[3]) for r in rows))
    print(f"{'check':<{w_name}}  {'measured':<{w_meas}}  {'bound':<{w_bound}}  result")
    failed = 0
    for name, measured, ok, bound in rows:
        failed += not ok
        print(f"{name:<{w_name}}  {measured:<{w_meas}}  {bound:<{w_bound}}  {'PASS' if ok else 'FAIL'}")
    print(f"{len(rows)} checks: {len(rows) - failed} passed, {failed} failed")
    print("PASS" if failed == 0 else "FAIL")
    return 0 if failed == 0 else 1
