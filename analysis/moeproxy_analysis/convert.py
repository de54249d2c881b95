"""Convert a Hugging Face Mixtral-style state dict into moeproxy's HDF5 checkpoint layout.

    convert-checkpoint INPUT... --out weights.h5 [--config config.json] [--heads H]
        [--kv-heads K] [--head-dim D] [--top-k K] [--rope-theta T] [--norm-eps E]
        [--rope-interleaved] [--dtype float32|float16]

INPUT: safetensors files (several for a sharded model; a directory means all its
*.safetensors), or PyTorch .bin/.pt files when torch is importable. The model shape not
visible in the tensor shapes (heads, kv heads, top-k, RoPE base, norm epsilon) comes from
config.json (`--config`, else the one beside the first input) or the flags, which win.

Mapping (docs/checkpoint.md): PyTorch Linear weights are [out, in] and moeproxy's [in, out],
so every projection is transposed; RMSNorm weights become the norm gains; Mixtral's expert
w1 (SiLU branch), w3 (linear branch) and w2 (down) keep their names. Dense Llama-style
models (mlp.gate_proj/up_proj/down_proj) become a dense SwiGLU FFN. The token embedding and
LM head have no counterpart (moeproxy has no vocabulary) and are skipped with a note;
any other tensor, or a missing one, is an error.

RoPE: Hugging Face checkpoints are stored for the "rotate half" form (pair j with
j + head_dim/2), which is docs/model.md's, so q/k are copied as they are. Weights in
Meta's original interleaved layout (pairs 2j, 2j+1) need --rope-interleaved, which applies
Hugging Face's own permutation to the q/k rows before transposing.
"""

import argparse
import glob
import json
import os
import re
import struct
import sys

import h5py
import numpy as np


class ConvertError(Exception):
    """Bad input; the message says which file or tensor and why."""


# ---- safetensors: 8-byte little-endian header length, JSON header, raw little-endian data

_DTYPES = {"F32": ("<f4", 4), "F16": ("<f2", 2), "BF16": ("<u2", 2), "F64": ("<f8", 8)}


class SafeTensors:
    def __init__(self, path):
        self.path = path
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) != 8:
                raise ConvertError(f"{path}: too short for a safetensors file")
            (n,) = struct.unpack("<Q", raw)
            if n > 100 * 2**20 or n > os.path.getsize(path) - 8:
                raise ConvertError(f"{path}: header length {n} is implausible; not a safetensors file")
            try:
                header = json.loads(f.read(n))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise ConvertError(f"{path}: the header is not JSON ({e})") from None
        header.pop("__metadata__", None)
        self.data_start = 8 + n
        self.entries = header

    def names(self):
        return list(self.entries)

    def get(self, name):
        e = self.entries[name]
        dtype, size = _DTYPES.get(e["dtype"], (None, 0))
        if dtype is None:
            raise ConvertError(f"{self.path}: tensor {name} has dtype {e['dtype']}; F32, F16 and BF16 are supported")
        begin, end = e["data_offsets"]
        shape = tuple(e["shape"])
        count = int(np.prod(shape)) if shape else 1
        if end - begin != count * size:
            raise ConvertError(f"{self.path}: tensor {name}: {end - begin} bytes for shape {shape} of {e['dtype']}")
        a = np.memmap(self.path, dtype=dtype, mode="r", offset=self.data_start + begin, shape=(count,))
        if e["dtype"] == "BF16":  # the high half of a float32
            a = (a.astype(np.uint32) << 16).view(np.float32)
        return np.asarray(a, dtype=np.float32).reshape(shape)


class TorchFile:
    def __init__(self, path):
        try:
            import torch
        except ImportError:
            raise ConvertError(f"{path}: reading PyTorch .bin/.pt files needs torch, which is not installed here; "
                               "convert the state dict to safetensors first") from None
        state = torch.load(path, map_location="cpu", weights_only=True)
        self.path = path
        self.tensors = {k: v.float().numpy() for k, v in state.items()}

    def names(self):
        return list(self.tensors)

    def get(self, name):
        return self.tensors[name]


def open_inputs(paths):
    """{tensor name: reader} over every input file."""
    files = []
    for p in paths:
        if os.path.isdir(p):
            found = sorted(glob.glob(os.path.join(p, "*.safetensors")))
            if not found:
                raise ConvertError(f"{p}: no *.safetensors files in the directory")
            files += found
        elif not os.path.exists(p):
            raise ConvertError(f"{p}: no such file")
        else:
            files.append(p)
    where = {}
    for f in files:
        reader = TorchFile(f) if f.endswith((".bin", ".pt", ".pth")) else SafeTensors(f)
        for name in reader.names():
            if name in where:
                raise ConvertError(f"tensor {name} is in both {where[name].path} and {f}")
            where[name] = reader
    return files, where


# ---- the mapping

_SKIPPED = re.compile(r"^(model\.embed_tokens\.weight|lm_head\.weight|.*rotary_emb\.inv_freq)$")


def rope_deinterleave(w, heads):
    """Hugging Face's permutation from Meta's interleaved q/k rows to rotate-half rows."""
    out_dim, in_dim = w.shape
    return w.reshape(heads, out_dim // heads // 2, 2, in_dim).transpose(0, 2, 1, 3).reshape(out_dim, in_dim)


def convert(args):
    files, where = open_inputs(args.inputs)
    config = {}
    config_path = args.config or os.path.join(os.path.dirname(os.path.abspath(files[0])), "config.json")
    if os.path.exists(config_path):
        with open(config_path) as f:
            config = json.load(f)
    elif args.config:
        raise ConvertError(f"{args.config}: no such file")
    if config.get("sliding_window"):
        print(f"note: sliding_window = {config['sliding_window']} is not modelled; attention is over the "
              "whole context", file=sys.stderr)

    def tensor(name):
        if name not in where:
            raise ConvertError(f"tensor {name} is missing from {', '.join(files)}")
        used.add(name)
        return where[name].get(name)

    used = set()
    layer_ids = sorted({int(m.group(1)) for n in where for m in [re.match(r"model\.layers\.(\d+)\.", n)] if m})
    if not layer_ids:
        raise ConvertError(f"no model.layers.N.* tensors in {', '.join(files)}; not a Mixtral/Llama-style state dict")
    if layer_ids != list(range(len(layer_ids))):
        raise ConvertError(f"layers {layer_ids} are not 0..{len(layer_ids) - 1}")
    layers = len(layer_ids)
    moe = any(".block_sparse_moe." in n for n in where)
    experts = len({m.group(1) for n in where for m in [re.match(r"model\.layers\.0\.block_sparse_moe\.experts\.(\d+)\.", n)] if m})

    q0 = tensor("model.layers.0.self_attn.q_proj.weight")
    k0 = tensor("model.layers.0.self_attn.k_proj.weight")
    hidden = q0.shape[1]
    heads = args.heads or config.get("num_attention_heads")
    if not heads:
        raise ConvertError("the number of heads is not in the tensor shapes: give --heads or a config.json")
    head_dim = args.head_dim or config.get("head_dim") or q0.shape[0] // heads
    if heads * head_dim != q0.shape[0]:
        raise ConvertError(f"q_proj has {q0.shape[0]} rows, not heads {heads} x head_dim {head_dim}")
    kv_heads = args.kv_heads or config.get("num_key_value_heads") or heads
    if kv_heads * head_dim != k0.shape[0]:
        raise ConvertError(f"k_proj has {k0.shape[0]} rows, not kv_heads {kv_heads} x head_dim {head_dim}")
    if moe:
        ffn_hidden = tensor("model.layers.0.block_sparse_moe.experts.0.w1.weight").shape[0]
    else:
        ffn_hidden = tensor("model.layers.0.mlp.gate_proj.weight").shape[0]
    top_k = args.top_k or config.get("num_experts_per_tok")
    rope_theta = args.rope_theta or config.get("rope_theta")
    norm_eps = args.norm_eps or config.get("rms_norm_eps")

    dtype = np.float16 if args.dtype == "float16" else np.float32
    partial = args.out + ".partial"
    with h5py.File(partial, "w") as out:
        out.attrs.update({"format_version": 1, "layers": layers, "hidden": hidden, "heads": heads,
                          "kv_heads": kv_heads, "head_dim": head_dim, "ffn": "moe" if moe else "dense",
                          "ffn_hidden": ffn_hidden, "experts": experts if moe else 0,
                          "activation": "swiglu", "norm": "rmsnorm",
                          "source": "convert-checkpoint " + " ".join(os.path.basename(f) for f in files)})
        if moe and top_k:
            out.attrs["top_k"] = int(top_k)
        if rope_theta:
            out.attrs["rope_theta"] = float(rope_theta)
        if norm_eps:
            out.attrs["norm_eps"] = float(norm_eps)

        def put(name, array, shape):
            if tuple(array.shape) != tuple(shape):
                raise ConvertError(f"{name}: shape {tuple(array.shape)}, expected {tuple(shape)}")
            out.create_dataset(name, data=np.ascontiguousarray(array, dtype=dtype))

        def linear(name, rows_in, cols_out, rope_heads=0):
            w = tensor(name)
            if rope_heads and args.rope_interleaved:
                w = rope_deinterleave(w, rope_heads)
            if w.shape != (cols_out, rows_in):
                raise ConvertError(f"{name}: shape {w.shape}, expected {(cols_out, rows_in)} ([out, in])")
            return w.T

        q, kv = heads * head_dim, kv_heads * head_dim
        for l in range(layers):
            p, o = f"model.layers.{l}.", f"layers/{l}/"
            put(o + "norm1_gain", tensor(p + "input_layernorm.weight"), (hidden,))
            put(o + "wq", linear(p + "self_attn.q_proj.weight", hidden, q, heads), (hidden, q))
            put(o + "wk", linear(p + "self_attn.k_proj.weight", hidden, kv, kv_heads), (hidden, kv))
            put(o + "wv", linear(p + "self_attn.v_proj.weight", hidden, kv), (hidden, kv))
            put(o + "wo", linear(p + "self_attn.o_proj.weight", q, hidden), (q, hidden))
            put(o + "norm2_gain", tensor(p + "post_attention_layernorm.weight"), (hidden,))
            if moe:
                put(o + "router", linear(p + "block_sparse_moe.gate.weight", hidden, experts), (hidden, experts))
                e = p + "block_sparse_moe.experts.{}."
                for ours, theirs, shape in (("w1", "w1", (hidden, ffn_hidden)), ("w3", "w3", (hidden, ffn_hidden)),
                                            ("w2", "w2", (ffn_hidden, hidden))):
                    stack = np.stack([linear(e.format(x) + theirs + ".weight", shape[0], shape[1])
                                      for x in range(experts)])
                    put(o + ours, stack, (experts,) + shape)
            else:
                put(o + "w1", linear(p + "mlp.gate_proj.weight", hidden, ffn_hidden), (hidden, ffn_hidden))
                put(o + "w3", linear(p + "mlp.up_proj.weight", hidden, ffn_hidden), (hidden, ffn_hidden))
                put(o + "w2", linear(p + "mlp.down_proj.weight", ffn_hidden, hidden), (ffn_hidden, hidden))
        put("final_gain", tensor("model.norm.weight"), (hidden,))

    skipped = sorted(n for n in where if n not in used and _SKIPPED.match(n))
    unknown = sorted(n for n in where if n not in used and not _SKIPPED.match(n))
    if unknown:
        os.remove(partial)
        shown = ", ".join(unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        raise ConvertError(f"tensors moeproxy's model has no place for: {shown} (biases, other architectures)")
    os.replace(partial, args.out)
    for n in skipped:
        print(f"note: skipped {n} (moeproxy has no vocabulary)", file=sys.stderr)
    deck = [f"layers = {layers}", f"hidden = {hidden}", f"heads = {heads}", f"head_dim = {head_dim}",
            f"kv_heads = {kv_heads}", f'ffn = "{"moe" if moe else "dense"}"', f"ffn_hidden = {ffn_hidden}"]
    if moe:
        deck += [f"experts = {experts}"] + ([f"top_k = {top_k}"] if top_k else [])
    deck += ['activation = "swiglu"', 'norm = "rmsnorm"']
    deck += [f"rope_theta = {float(rope_theta)!r}"] if rope_theta else []
    deck += [f"norm_eps = {float(norm_eps)!r}"] if norm_eps else []
    print(f"wrote {args.out}; its [model] section:\n" + "\n".join(deck) + f'\ncheckpoint = "{args.out}"')


def main(argv=None):
    ap = argparse.ArgumentParser(prog="convert-checkpoint", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n\n".join(__doc__.split("\n\n")[2:]))
    ap.add_argument("inputs", nargs="+", help="safetensors (or .bin/.pt with torch) files or a directory")
    ap.add_argument("--out", required=True, help="the HDF5 checkpoint to write")
    ap.add_argument("--config", help="Hugging Face config.json (default: beside the first input, if any)")
    ap.add_argument("--heads", type=int)
    ap.add_argument("--kv-heads", type=int)
    ap.add_argument("--head-dim", type=int)
    ap.add_argument("--top-k", type=int)
    ap.add_argument("--rope-theta", type=float)
    ap.add_argument("--norm-eps", type=float)
    ap.add_argument("--rope-interleaved", action="store_true",
                    help="q/k rows in Meta's interleaved RoPE layout: permute them to rotate-half")
    ap.add_argument("--dtype", choices=("float32", "float16"), default="float32")
    args = ap.parse_args(argv)
    try:
        convert(args)
    except ConvertError as e:
        print(f"convert-checkpoint: error: {e}", file=sys.stderr)
        return 2
    return 0
