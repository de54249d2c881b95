"""An independent NumPy implementation of the model moeproxy computes.

Written from docs/model.md, docs/checkpoint.md and docs/deck.md alone (not from the C++), so
that agreement with a moeproxy run is evidence that the documents are complete and that the
code computes what they say. Everything is float64 except where the documents say float32.

    moeproxy-numpy-model RESULTS [--checkpoint FILE] [--tolerance 1e-4] [--check-generated]

RESULTS is a moeproxy result file written with output.dump_hidden = true; its deck (with
the --set trailer) gives the model and workload. The weights are the checkpoint's (the
deck's model.checkpoint unless --checkpoint names one). --check-generated also requires the
checkpoint to equal, bit for bit, the weights docs/model.md's hash generates (true for
`moeproxy export-checkpoint` files).
"""

import argparse
import math
import sys
from dataclasses import dataclass

import h5py
import numpy as np

from .results import effective_deck, load

U64 = np.uint64


# ---- docs/model.md "Deterministic numbers"

def splitmix64(x):
    x = np.asarray(x, dtype=U64)
    with np.errstate(over="ignore"):
        x = x + U64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> U64(30))) * U64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> U64(27))) * U64(0x94D049BB133111EB)
    return x ^ (x >> U64(31))


def tensor_stream(seed, kind, layer, expert):
    s = splitmix64(U64(seed))
    s = splitmix64(s ^ U64(kind))
    s = splitmix64(s ^ U64(layer & 0xFFFFFFFF))
    return splitmix64(s ^ U64(expert & 0xFFFFFFFF))


def uniform(stream, rows, cols):
    """u at every (row, col) of the index arrays rows x cols, exact float32 values."""
    r = np.asarray(rows, dtype=U64)[:, None]
    c = np.asarray(cols, dtype=U64)[None, :]
    h = splitmix64(splitmix64(U64(stream) ^ r) ^ c)
    return ((h >> U64(40)).astype(np.int64) - (1 << 23)).astype(np.float32) / np.float32(1 << 23)


KIND = {"input": 1, "norm1_gain": 2, "norm1_bias": 3, "wq": 4, "wk": 5, "wv": 6, "wo": 7,
        "norm2_gain": 8, "norm2_bias": 9, "router": 10, "w1": 11, "w3": 12, "w2": 13,
        "final_gain": 14, "final_bias": 15, "synthetic_routing": 16}


# ---- the run description (docs/deck.md defaults)

@dataclass
class Config:
    layers: int = 2
    hidden: int = 64
    heads: int = 4
    head_dim: int = 0
    kv_heads: int = 0
    ffn: str = "moe"
    ffn_hidden: int = 128
    experts: int = 4
    top_k: int = 2
    renormalize: bool = True
    activation: str = "swiglu"
    norm: str = "rmsnorm"
    rope: bool = True
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    capacity_factor: float = 0.0
    seed: int = 1234
    checkpoint: str = ""
    batch: int = 4
    prompt: int = 16
    decode_steps: int = 4
    routing: str = "learned"

    @property
    def hd(self):
        return self.head_dim or self.hidden // self.heads

    @property
    def hkv(self):
        return self.kv_heads or self.heads

    @property
    def moe(self):
        return self.ffn == "moe"


def config_from_deck(deck):
    cfg = Config()
    for section in ("model", "workload"):
        for key, value in deck.get(section, {}).items():
            if hasattr(cfg, key):
                setattr(cfg, key, type(getattr(cfg, key))(value))
    return cfg


# ---- weights

def tensor_shapes(cfg):
    """{dataset name: stored shape} of docs/checkpoint.md for this model."""
    d, q, kv, f, E = cfg.hidden, cfg.heads * cfg.hd, cfg.hkv * cfg.hd, cfg.ffn_hidden, cfg.experts
    ln = cfg.norm == "layernorm"
    expert = (lambda shape: (E,) + shape) if cfg.moe else (lambda shape: shape)
    shapes = {}
    for l in range(cfg.layers):
        p = f"layers/{l}/"
        shapes[p + "norm1_gain"] = (d,)
        if ln:
            shapes[p + "norm1_bias"] = (d,)
        shapes.update({p + "wq": (d, q), p + "wk": (d, kv), p + "wv": (d, kv), p + "wo": (q, d),
                       p + "norm2_gain": (d,)})
        if ln:
            shapes[p + "norm2_bias"] = (d,)
        if cfg.moe:
            shapes[p + "router"] = (d, E)
        shapes[p + "w1"] = expert((d, f))
        if cfg.activation == "swiglu":
            shapes[p + "w3"] = expert((d, f))
        shapes[p + "w2"] = expert((f, d))
    shapes["final_gain"] = (d,)
    if ln:
        shapes["final_bias"] = (d,)
    return shapes


def load_checkpoint(path, cfg):
    with h5py.File(path, "r") as f:
        return {name: f[name][...].astype(np.float32) for name in tensor_shapes(cfg)}


def generated_weights(cfg):
    """docs/model.md's table: offset + s32 * u exactly, rounded to float32 once."""
    d, q, f = cfg.hidden, cfg.heads * cfg.hd, cfg.ffn_hidden
    rule = {"norm1_gain": (0.1, 1.0), "norm2_gain": (0.1, 1.0), "final_gain": (0.1, 1.0),
            "norm1_bias": (0.1, 0.0), "norm2_bias": (0.1, 0.0), "final_bias": (0.1, 0.0),
            "wq": (1 / math.sqrt(d), 0.0), "wk": (1 / math.sqrt(d), 0.0),
            "wv": (1 / math.sqrt(d), 0.0), "router": (1 / math.sqrt(d), 0.0),
            "w1": (1 / math.sqrt(d), 0.0), "w3": (1 / math.sqrt(d), 0.0),
            "wo": (1 / math.sqrt(q), 0.0), "w2": (1 / math.sqrt(f), 0.0)}
    out = {}
    for name, shape in tensor_shapes(cfg).items():
        base = name.split("/")[-1]
        layer = int(name.split("/")[1]) if name.startswith("layers/") else 0
        scale, offset = float(np.float32(rule[base][0])), rule[base][1]

        def block(expert, rows, cols):
            u = uniform(tensor_stream(cfg.seed, KIND[base], layer, expert), np.arange(rows), np.arange(cols))
            return (offset + scale * u.astype(np.float64)).astype(np.float32)

        if len(shape) == 1:
            out[name] = block(0, 1, shape[0])[0]
        elif len(shape) == 3:
            out[name] = np.stack([block(e, shape[1], shape[2]) for e in range(shape[0])])
        else:
            out[name] = block(0, *shape)
    return out


# ---- docs/model.md "One layer", "MoE", "The whole forward"

def norm(cfg, x, w, gain, bias):
    if cfg.norm == "layernorm":
        c = x - x.mean(axis=-1, keepdims=True)
        return c / np.sqrt((c * c).mean(axis=-1, keepdims=True) + cfg.norm_eps) * w[gain] + w[bias]
    return x / np.sqrt((x * x).mean(axis=-1, keepdims=True) + cfg.norm_eps) * w[gain]


def rope(cfg, x, pos):
    """x [tokens, heads, hd] at positions pos [tokens]: the rotate-half form."""
    hd = cfg.hd
    half = hd // 2
    j = np.arange(half)
    a = pos[:, None].astype(np.float64) * cfg.rope_theta ** (-2.0 * j / hd)  # [tokens, half]
    cos, sin = np.cos(a)[:, None, :], np.sin(a)[:, None, :]
    x1, x2 = x[..., :half], x[..., half:]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def gelu(v):
    return 0.5 * v * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (v + 0.044715 * v ** 3)))


def silu(v):
    return v / (1.0 + np.exp(-v))


def ffn(cfg, h, w1, w2, w3):
    if cfg.activation == "swiglu":
        return (silu(h @ w1) * (h @ w3)) @ w2
    return gelu(h @ w1) @ w2


def route(cfg, h, w, l, token_ids):
    """Expert indices and weights [T, k] of each token, in slot order j."""
    T, E, k = h.shape[0], cfg.experts, cfg.top_k
    idx = np.zeros((T, k), dtype=np.int64)
    wt = np.full((T, k), 1.0 / k)
    if cfg.routing == "learned":
        logits = (h.astype(np.float32) @ w[f"layers/{l}/router"]).astype(np.float64)
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        for t in range(T):
            order = np.argsort(-logits[t], kind="stable")[:k]  # ties: the lower index first
            idx[t] = order
            wt[t] = p[t, order]
            if cfg.renormalize:
                wt[t] /= wt[t].sum()
        return idx, wt
    s = 0.0 if cfg.routing == "uniform" else float(cfg.routing.split(":", 1)[1])
    P = (np.arange(E) + 1.0) ** -s
    c = np.cumsum(P / P.sum())
    stream = tensor_stream(cfg.seed, KIND["synthetic_routing"], l, 0)
    for t, tid in enumerate(token_ids):
        chosen = []
        for j in range(k):
            draws = (uniform(stream, [tid], 64 * j + np.arange(64))[0].astype(np.float64) + 1.0) / 2.0
            pick = None
            for u in draws:
                above = np.nonzero(c > u)[0]
                e = int(above[0]) if above.size else E - 1
                if e not in chosen:
                    pick = e
                    break
            if pick is None:
                pick = min(e for e in range(E) if e not in chosen)
            chosen.append(pick)
        idx[t] = chosen
    return idx, wt


def moe(cfg, h, w, l, token_ids):
    T, k, E = h.shape[0], cfg.top_k, cfg.experts
    idx, wt = route(cfg, h, w, l, token_ids)
    capacity = math.ceil(cfg.capacity_factor * T * k / E) if cfg.capacity_factor > 0 else None
    kept = np.ones((T, k), dtype=bool)
    if capacity is not None:
        used = np.zeros(E, dtype=np.int64)
        for t in range(T):
            for j in range(k):
                e = idx[t, j]
                kept[t, j] = used[e] < capacity
                used[e] += kept[t, j]
    y = np.zeros_like(h)
    p = f"layers/{l}/"
    for j in range(k):  # j ascending, as the sum is written
        for e in range(E):
            rows = np.nonzero((idx[:, j] == e) & kept[:, j])[0]
            if rows.size:
                w3 = w[p + "w3"][e] if cfg.activation == "swiglu" else None
                y[rows] += wt[rows, j][:, None] * ffn(cfg, h[rows], w[p + "w1"][e], w[p + "w2"][e], w3)
    return y


def layer(cfg, w, l, x, seqs, pos, token_ids, cache):
    """x [T, d]: token t of sequence seqs[t] at position pos[t]; cache[l] = (k, v) per sequence."""
    p = f"layers/{l}/"
    H, Hkv, hd = cfg.heads, cfg.hkv, cfg.hd
    h = norm(cfg, x, w, p + "norm1_gain", p + "norm1_bias")
    q = (h @ w[p + "wq"]).reshape(-1, H, hd)
    k = (h @ w[p + "wk"]).reshape(-1, Hkv, hd)
    v = (h @ w[p + "wv"]).reshape(-1, Hkv, hd)
    if cfg.rope:
        q, k = rope(cfg, q, pos), rope(cfg, k, pos)
    kc, vc = cache[l]
    for t in range(x.shape[0]):
        kc[seqs[t], :, pos[t]] = k[t]
        vc[seqs[t], :, pos[t]] = v[t]
    out = np.zeros_like(q)
    group = H // Hkv
    for t in range(x.shape[0]):
        b, P = seqs[t], pos[t] + 1
        for hh in range(H):
            keys, values = kc[b, hh // group, :P], vc[b, hh // group, :P]
            s = keys @ q[t, hh] / math.sqrt(hd)
            e = np.exp(s - s.max())
            out[t, hh] = (e / e.sum()) @ values
    x = x + out.reshape(x.shape[0], -1) @ w[p + "wo"]
    h = norm(cfg, x, w, p + "norm2_gain", p + "norm2_bias")
    if cfg.moe:
        return x + moe(cfg, h, w, l, token_ids)
    return x + ffn(cfg, h, w[p + "w1"], w[p + "w2"], w.get(p + "w3"))


def forward(cfg, w):
    """(prefill [B, S, d], decode [B, G, d]) final-normed outputs of the whole batch."""
    B, S, G, d = cfg.batch, cfg.prompt, cfg.decode_steps, cfg.hidden
    ids = np.arange(B * S)
    x = uniform(tensor_stream(cfg.seed, KIND["input"], 0, 0), ids, np.arange(d)).astype(np.float64)
    cache = [(np.zeros((B, cfg.hkv, S + G, cfg.hd)), np.zeros((B, cfg.hkv, S + G, cfg.hd)))
             for _ in range(cfg.layers)]
    seqs, pos = ids // S, ids % S
    for l in range(cfg.layers):
        x = layer(cfg, w, l, x, seqs, pos, ids, cache)
    prefill = norm(cfg, x, w, "final_gain", "final_bias").reshape(B, S, d)
    decode = np.zeros((B, G, d))
    step = prefill[:, S - 1, :]
    for g in range(G):
        x = step
        for l in range(cfg.layers):
            x = layer(cfg, w, l, x, np.arange(B), np.full(B, S + g), B * S + g * B + np.arange(B), cache)
        step = norm(cfg, x, w, "final_gain", "final_bias")
        decode[:, g, :] = step
    return prefill, decode


def max_relative_error(got, ref):
    return float(np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-30))


def main(argv=None):
    ap = argparse.ArgumentParser(prog="moeproxy-numpy-model", description=__doc__.split("\n\n")[0])
    ap.add_argument("results", help="moeproxy result file written with output.dump_hidden = true")
    ap.add_argument("--checkpoint", help="weights (default: the deck's model.checkpoint)")
    ap.add_argument("--tolerance", type=float, default=1e-4)
    ap.add_argument("--check-generated", action="store_true",
                    help="also require the checkpoint to hold docs/model.md's generated weights exactly")
    args = ap.parse_args(argv)
    run = load(args.results)
    cfg = config_from_deck(effective_deck(run))
    path = args.checkpoint or cfg.checkpoint
    if not path:
        print("moeproxy-numpy-model: the run used generated weights and no --checkpoint was given", file=sys.stderr)
        return 2
    weights = load_checkpoint(path, cfg)
    if args.check_generated:
        generated = generated_weights(cfg)
        wrong = [n for n in weights if not np.array_equal(weights[n].view(np.uint32), generated[n].view(np.uint32))]
        if wrong:
            print(f"FAIL: {path} differs from docs/model.md's generated weights in {', '.join(wrong)}")
            return 1
        print(f"{path}: every tensor equals docs/model.md's generated weights bit for bit")
    prefill, decode = forward(cfg, weights)
    worst = 0.0
    with h5py.File(args.results, "r") as f:
        for name, mine in (("hidden_prefill", prefill), ("hidden_decode", decode)):
            got = f["output"][name][...].astype(np.float64)
            if got.shape != mine.shape:
                print(f"FAIL: /output/{name} has shape {got.shape}, the deck gives {mine.shape}")
                return 1
            err = max_relative_error(got, mine)
            worst = max(worst, err)
            print(f"/output/{name} {got.shape}: max relative error vs NumPy = {err:.3e}")
    verdict = "PASS" if worst <= args.tolerance else "FAIL"
    print(f"{verdict} max_rel_error={worst:.3e} tolerance={args.tolerance:g}")
    return 0 if verdict == "PASS" else 1
