"""Load one moeproxy result file (HDF5 schema v1) into plain numpy arrays and dicts.

Everything the tools need is read here, once, so the report and the acceptance checks
cannot disagree about what a number means. Layout-specific structure (which ranks hold
which layers, which communication groups exist) is never assumed: the tools work from the
shapes and names the file declares (`phases`, `kinds`, `keys`, `mpi_size`).
"""

import math
import os
import shlex
from dataclasses import dataclass, field

import numpy as np

from . import SCHEMA_VERSION


class ResultsError(Exception):
    """A file that is not a usable moeproxy result; the message says why."""


class IncompleteError(ResultsError):
    """A moeproxy result file whose writer never finished (root attribute complete != 1)."""


def _text(value):
    # Attributes are variable-length UTF-8 (str in h5py 3), but older writers or other
    # tools may leave bytes or numpy scalars behind.
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray) and value.shape == ():
        return _text(value[()])
    return str(value)


def _strings(dataset):
    # String datasets are fixed-length bytes (parallel HDF5 cannot write vlen data).
    return [s.decode("utf-8", "replace") if isinstance(s, bytes) else str(s) for s in dataset[()]]


def _scalar(value):
    if isinstance(value, (bytes, str)):
        return _text(value)
    if isinstance(value, np.ndarray):
        value = value[()] if value.shape == () else value
    if isinstance(value, np.generic):
        return value.item()
    return value


def deck_name_from_command_line(command_line):
    """The deck file's stem from the stored command line, or "" if none is recognisable.

    The deck path is the first positional argument after the subcommand; `--set k=v` and
    `--set=k=v` may come before it (CLI11 accepts options anywhere).
    """
    try:
        words = shlex.split(command_line)
    except ValueError:
        words = command_line.split()
    for i, w in enumerate(words):
        if w in ("run", "predict", "check"):
            rest = words[i + 1:]
            break
    else:
        return ""
    skip = False
    for w in rest:
        if skip:
            skip = False
            continue
        if w.startswith("-"):
            # options that take a separate value; the value is not the deck
            skip = "=" not in w and w in ("--set", "--ranks", "-s")
            continue
        base = os.path.basename(w)
        return base[:-5] if base.endswith(".toml") else base
    return ""


def first_comment_line(deck_text):
    """The deck's first comment line (its title, by the convention of inputs/*.toml)."""
    for line in deck_text.splitlines():
        s = line.strip()
        if not s:
            continue
        if s.startswith("#"):
            return s.lstrip("#").strip()
        break
    return ""


@dataclass
class Run:
    path: str
    label: str                     # unique short name of this file in a report
    deck_name: str
    description: str
    layout: str
    ranks: int
    predicted: bool
    attrs: dict                    # root attributes, deck text included
    summary: dict                  # /summary attributes
    hosts: list
    devices: list
    phases: list
    prefill: np.ndarray            # [rank, layer, phase] s
    decode: np.ndarray             # [rank, layer, phase] s
    prefill_wall: np.ndarray       # [rank] s
    decode_wall: np.ndarray        # [rank] s
    memory_kinds: list
    memory_bytes: np.ndarray       # [rank, kind] bytes
    flops_prefill: np.ndarray      # [rank] FLOP
    flops_decode: np.ndarray       # [rank] FLOP
    expert_tokens: object          # [layer, expert] tokens, or None for dense models
    comm_keys: list
    comm_group_size: np.ndarray    # [key]
    comm_calls: np.ndarray         # [rank, key]
    comm_bytes: np.ndarray         # [rank, key] bytes
    comm_seconds: np.ndarray       # [rank, key] s
    comm_uncompressed_bytes: np.ndarray  # [rank, key] bytes without compression (= comm_bytes in older files)
    derived: dict = field(default_factory=dict)
    failover: object = None        # /failover attributes of a failover drill, else None
    # /balance of a separated run with balancing on: {"attrs": {...}, "checks": {column: array},
    # "trials": {column: array}} (strings decoded), else None.
    balance: object = None
    # Each decode step's wall, [rank, step] s; None in files written before 2026-12-06.
    decode_step_wall: object = None

    def peak_memory_per_rank(self):
        """Bytes per rank: the device high-water mark where measured, else the sum of kinds.

        A high-water mark of 0 means the device could not report one (it is never really
        0 on a rank that ran), so the sum of the accounted kinds stands in for it.
        """
        kinds = self.memory_kinds
        b = self.memory_bytes.astype(np.float64)
        if b.size == 0:
            return np.zeros(self.ranks)
        if "high_water" in kinds:
            hw = b[:, kinds.index("high_water")]
            others = np.delete(b, kinds.index("high_water"), axis=1).sum(axis=1)
            return np.where(hw > 0, hw, others)
        return b.sum(axis=1)

    def metric(self, name):
        """A named figure for tables and acceptance checks; KeyError if the file has none."""
        if name in self.derived:
            return self.derived[name]
        if name in self.summary:
            return self.summary[name]
        if name in self.attrs and name != "deck":
            return self.attrs[name]
        raise KeyError(name)

    def metric_names(self):
        names = list(self.summary) + list(self.derived)
        names += [k for k in self.attrs if k not in ("deck", "kokkos_config")]
        return sorted(set(names))


def _derive(run):
    peak = run.peak_memory_per_rank()
    d = {
        "ranks": run.ranks,
        "deck_name": run.deck_name,
        "peak_memory_bytes": float(peak.max()) if peak.size else 0.0,
        "prefill_wall_max_s": float(run.prefill_wall.max()) if run.prefill_wall.size else 0.0,
        "decode_wall_max_s": float(run.decode_wall.max()) if run.decode_wall.size else 0.0,
        "comm_bytes_total": float(run.comm_bytes.sum()),
        "comm_bytes_uncompressed_total": float(run.comm_uncompressed_bytes.sum()),
        "comm_bytes_saved": float(run.comm_uncompressed_bytes.sum() - run.comm_bytes.sum()),
    }
    if run.decode_step_wall is not None and run.decode_step_wall.size:
        # The first steps after a prefill can take twice the steady one (docs/predict-validation.md):
        # the median step of the slowest rank is the steady TPOT.
        d["tpot_median_s"] = float(np.median(run.decode_step_wall.max(axis=0)))
    if run.expert_tokens is not None and run.expert_tokens.size:
        t = run.expert_tokens.astype(np.float64)
        d["expert_tokens_min"] = float(t.min())
        d["expert_tokens_max"] = float(t.max())
        d["expert_tokens_std"] = float(t.std(axis=1).max())
    run.derived = d


def _balance(group):
    def columns(g):
        out = {}
        for name, dset in g.items():
            v = dset[()]
            out[name] = [x.decode() if isinstance(x, bytes) else x for x in v] if v.dtype.kind == "S" else v
        return out

    return {"attrs": {k: _scalar(v) for k, v in group.attrs.items()},
            "checks": columns(group["checks"]), "trials": columns(group["trials"])}


def load(path, label=None):
    """Read a complete result file; ResultsError (IncompleteError) says why one is refused."""
    import h5py  # imported late so `--help` works where h5py is missing

    if not os.path.exists(path):
        raise ResultsError(f"{path}: no such file")
    if os.path.isdir(path):
        raise ResultsError(f"{path}: is a directory, expected a moeproxy .h5 result file")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise ResultsError(f"{path}: not a readable HDF5 file ({e})") from None
    with f:
        attrs = {k: _scalar(v) for k, v in f.attrs.items()}
        if "schema_version" not in attrs:
            raise ResultsError(f"{path}: not a moeproxy result file (no schema_version attribute)")
        complete = attrs.get("complete", 0)
        if complete != 1:
            hint = " (a .partial file is a write that failed or was killed)" if path.endswith(".partial") else ""
            raise IncompleteError(
                f"{path}: incomplete result file (complete = {complete}): the run did not finish "
                f"writing it{hint}; rerun it or use another file")
        if attrs["schema_version"] != SCHEMA_VERSION:
            raise ResultsError(
                f"{path}: schema_version {attrs['schema_version']}, this tool reads version "
                f"{SCHEMA_VERSION} (docs/hdf5-schema.md)")
        try:
            summary = {k: _scalar(v) for k, v in f["summary"].attrs.items()}
            ranks = int(attrs["mpi_size"])
            deck_text = _text(attrs.get("deck", ""))
            cmd = _text(attrs.get("command_line", ""))
            comm = f["comm"]
            run = Run(
                path=path,
                label=label or os.path.splitext(os.path.basename(path))[0],
                deck_name=deck_name_from_command_line(cmd) or first_comment_line(deck_text)
                or os.path.splitext(os.path.basename(path))[0],
                description=first_comment_line(deck_text),
                layout=_text(attrs.get("layout", "?")),
                ranks=ranks,
                predicted=bool(attrs.get("predicted", 0)),
                attrs=attrs,
                summary=summary,
                hosts=_strings(f["hosts"]) if "hosts" in f else [],
                devices=_strings(f["devices"]) if "devices" in f else [],
                phases=_strings(f["timing/phases"]),
                prefill=f["timing/prefill"][()].astype(np.float64),
                decode=f["timing/decode"][()].astype(np.float64),
                prefill_wall=f["timing/prefill_wall"][()].astype(np.float64),
                decode_wall=f["timing/decode_wall"][()].astype(np.float64),
                decode_step_wall=(f["timing/decode_step_wall"][()].astype(np.float64)
                                  if "timing/decode_step_wall" in f else None),
                memory_kinds=_strings(f["memory/kinds"]),
                memory_bytes=f["memory/bytes"][()],
                flops_prefill=f["flops/prefill"][()] if "flops/prefill" in f else np.zeros(ranks),
                flops_decode=f["flops/decode"][()] if "flops/decode" in f else np.zeros(ranks),
                expert_tokens=f["experts/tokens"][()] if "experts/tokens" in f else None,
                comm_keys=_strings(comm["keys"]),
                comm_group_size=comm["group_size"][()],
                comm_calls=comm["calls"][()].reshape(ranks, -1),
                comm_bytes=comm["bytes"][()].reshape(ranks, -1),
                comm_seconds=comm["seconds"][()].reshape(ranks, -1).astype(np.float64),
                comm_uncompressed_bytes=(comm["uncompressed_bytes"] if "uncompressed_bytes" in comm
                                         else comm["bytes"])[()].reshape(ranks, -1),
                failover={k: _scalar(v) for k, v in f["failover"].attrs.items()} if "failover" in f else None,
            )
            if "balance" in f:
                run.balance = _balance(f["balance"])
        except KeyError as e:
            raise ResultsError(f"{path}: damaged result file, missing {e}") from None
    _derive(run)
    return run


def is_missing(value):
    return value is None or (isinstance(value, float) and math.isnan(value))


def mfu_or_none(run):
    """MFU is meaningless where the peak is unknown (CPU runs store peak_flops = 0)."""
    peak = run.summary.get("peak_flops", 0.0)
    mfu = run.summary.get("mfu")
    if not peak or is_missing(mfu):
        return None
    return float(mfu)


def _toml_value(text):
    import tomllib
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text   # the app reads text that is not TOML as a string (docs/deck.md)


def effective_deck(run):
    """The deck as the run used it: the stored text plus its `--set` trailer applied.

    Returns {} when the text cannot be parsed; the report only uses it for context (batch,
    decode steps), never for a figure of merit.
    """
    import tomllib
    text = _text(run.attrs.get("deck", ""))
    try:
        deck = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return {}
    for line in text.splitlines():
        s = line.strip()
        if not s.startswith("# --set "):
            continue
        key, sep, value = s[len("# --set "):].partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot:
            continue
        deck.setdefault(section, {})[name] = _toml_value(value.strip())
    return deck
