#!/usr/bin/env bash
# Checkpoints against the independent NumPy model and the converter:
#   checkpoint_test.sh CASE MOEPROXY SOURCE_DIR OUTDIR
#   numpy-DECK  (or numpy-zipf-capacity: tiny-moe8 with Zipf routing and a capacity factor)
#               export DECK's weights, run moeproxy from them (fp32, hidden states dumped);
#               analysis/moeproxy-numpy-model must find the checkpoint equal to docs/model.md's
#               generated weights and the run's outputs within 1e-4 of its own.
#   convert     write a tiny Mixtral safetensors file (F32, F16 and BF16 tensors, random
#               weights that are not the hash's), convert it, check the mapping exactly, run
#               moeproxy from it and compare with the NumPy model within 1e-4; also the
#               interleaved-RoPE permutation, a float16 checkpoint and the refusals.
set -uo pipefail
case_name=$1 exe=$2 src=$3 out=$4/$1
rm -rf "$out" && mkdir -p "$out"
py=/usr/bin/python3
fail() { echo "FAIL ($case_name): $*"; exit 1; }

run_moeproxy() {  # DECK RESULTS CHECKPOINT [--set ...]
  local deck=$1 results=$2 weights=$3
  shift 3
  "$exe" run "$deck" --set model.checkpoint="$weights" --set output.file="$results" \
    --set output.dump_hidden=true --set model.precision=fp32 "$@" > "$results.log" 2>&1 \
    || { cat "$results.log"; fail "moeproxy run from $weights failed"; }
  cat "$results.log"
  grep -qx PASS "$results.log" || fail "the run from $weights did not PASS its own verification"
}

case $case_name in
  numpy-*)
    deck=$src/tests/decks/${case_name#numpy-}.toml overrides=()
    if [ "$case_name" = numpy-zipf-capacity ]; then
      # Synthetic routing and dropped tokens; the reference sees the whole batch as one group.
      deck=$src/tests/decks/tiny-moe8.toml
      overrides=(--set workload.routing=zipf:1.5 --set model.capacity_factor=1.0 --set verify.sample=16)
    fi
    "$exe" export-checkpoint "$deck" --out "$out/weights.h5" || fail "export-checkpoint failed"
    run_moeproxy "$deck" "$out/run.h5" "$out/weights.h5" "${overrides[@]}"
    "$py" "$src/analysis/moeproxy-numpy-model" "$out/run.h5" --check-generated --tolerance 1e-4 \
      || fail "the NumPy model disagrees with the run" ;;
  convert)
    "$py" - "$out" <<'PY' || fail "could not write the synthetic safetensors files"
import json, os, struct, sys
import numpy as np
out = sys.argv[1]
rng = np.random.default_rng(7)
L, d, H, Hkv, hd, f, E = 2, 32, 4, 2, 8, 24, 4
def exact_bf16(a):  # float32 values a BF16 file holds exactly
    return (a.astype(np.float32).view(np.uint32) & 0xFFFF0000).view(np.float32)
tensors = {}
def add(name, shape, scale, offset=0.0, kind="F32"):
    a = (offset + scale * rng.standard_normal(shape)).astype(np.float32)
    a = exact_bf16(a) if kind == "BF16" else a.astype(np.float16).astype(np.float32) if kind == "F16" else a
    tensors[name] = (a, kind)
for l in range(L):
    p = f"model.layers.{l}."
    add(p + "input_layernorm.weight", (d,), 0.1, 1.0, "BF16")
    add(p + "self_attn.q_proj.weight", (H * hd, d), d ** -0.5, kind="BF16")
    add(p + "self_attn.k_proj.weight", (Hkv * hd, d), d ** -0.5, kind="F16")
    add(p + "self_attn.v_proj.weight", (Hkv * hd, d), d ** -0.5)
    add(p + "self_attn.o_proj.weight", (d, H * hd), (H * hd) ** -0.5, kind="BF16")
    add(p + "post_attention_layernorm.weight", (d,), 0.1, 1.0)
    add(p + "block_sparse_moe.gate.weight", (E, d), d ** -0.5, kind="F16")
    for e in range(E):
        q = p + f"block_sparse_moe.experts.{e}."
        add(q + "w1.weight", (f, d), d ** -0.5, kind="BF16")
        add(q + "w3.weight", (f, d), d ** -0.5)
        add(q + "w2.weight", (d, f), f ** -0.5, kind="F16")
add("model.norm.weight", (d,), 0.1, 1.0)
add("model.embed_tokens.weight", (50, d), 1.0, kind="BF16")
add("lm_head.weight", (50, d), 1.0, kind="BF16")
np.savez(f"{out}/original.npz", **{k: v[0] for k, v in tensors.items()})

def write(path, items):
    header, blobs, offset = {"__metadata__": {"format": "pt"}}, [], 0
    for name, (a, kind) in items:
        raw = ((a.view(np.uint32) >> 16).astype("<u2") if kind == "BF16" else a.astype("<f2" if kind == "F16" else "<f4")).tobytes()
        header[name] = {"dtype": kind, "shape": list(a.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    text = json.dumps(header).encode()
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))
items = list(tensors.items())
os.makedirs(f"{out}/hf")
write(f"{out}/hf/model-00001-of-00002.safetensors", items[: len(items) // 2])  # a sharded model
write(f"{out}/hf/model-00002-of-00002.safetensors", items[len(items) // 2 :])
json.dump({"num_attention_heads": H, "num_key_value_heads": Hkv, "num_experts_per_tok": 2,
           "rope_theta": 1e6, "rms_norm_eps": 1e-5, "sliding_window": None}, open(f"{out}/hf/config.json", "w"))
# The same model with q/k rows in Meta's interleaved RoPE order (the inverse of the permutation).
def interleave(w, heads):
    o, i = w.shape
    return w.reshape(heads, 2, o // heads // 2, i).transpose(0, 2, 1, 3).reshape(o, i)
meta = {k: (interleave(a, H if "q_proj" in k else Hkv) if ("q_proj" in k or "k_proj" in k) else a, "F32")
        for k, (a, _) in tensors.items()}
write(f"{out}/meta.safetensors", list(meta.items()))
# Refusals: a tensor with no place in the model, a file that is not safetensors.
write(f"{out}/extra.safetensors", items + [("model.layers.0.self_attn.q_proj.bias", (np.zeros(H * hd, np.float32), "F32"))])
open(f"{out}/garbage.safetensors", "wb").write(b"\xff" * 64)
PY
    conv=$src/analysis/convert-checkpoint
    "$py" "$conv" "$out/hf" --out "$out/mixtral.h5" > "$out/convert.log" 2>&1 || { cat "$out/convert.log"; fail "convert failed"; }
    cat "$out/convert.log"
    grep -q "skipped lm_head.weight" "$out/convert.log" || fail "no note about the skipped LM head"
    "$py" "$conv" "$out/meta.safetensors" --config "$out/hf/config.json" --rope-interleaved --out "$out/meta.h5" \
      > "$out/meta.log" 2>&1 || { cat "$out/meta.log"; fail "convert --rope-interleaved failed"; }
    "$py" - "$out" <<'PY' || fail "the converted checkpoint does not hold the state dict's values"
import sys
import h5py
import numpy as np
out = sys.argv[1]
o = np.load(f"{out}/original.npz")
with h5py.File(f"{out}/mixtral.h5") as f, h5py.File(f"{out}/meta.h5") as m:
    a = dict(f.attrs)
    assert (a["layers"], a["hidden"], a["heads"], a["kv_heads"], a["head_dim"], a["experts"], a["top_k"]) == (2, 32, 4, 2, 8, 4, 2), a
    assert a["ffn"] == "moe" and a["activation"] == "swiglu" and a["norm"] == "rmsnorm" and a["rope_theta"] == 1e6
    checks = 0
    for l in range(2):
        p, q = f"model.layers.{l}.", f"layers/{l}/"
        pairs = [("norm1_gain", p + "input_layernorm.weight", False), ("norm2_gain", p + "post_attention_layernorm.weight", False),
                 ("wq", p + "self_attn.q_proj.weight", True), ("wk", p + "self_attn.k_proj.weight", True),
                 ("wv", p + "self_attn.v_proj.weight", True), ("wo", p + "self_attn.o_proj.weight", True),
                 ("router", p + "block_sparse_moe.gate.weight", True)]
        for ours, theirs, transposed in pairs:
            want = o[theirs].T if transposed else o[theirs]
            for g in (f, m):
                assert np.array_equal(g[q + ours][...], want), f"{g.filename}:{q + ours} != {theirs}"
                checks += 1
        for e in range(4):
            for w in ("w1", "w2", "w3"):
                want = o[p + f"block_sparse_moe.experts.{e}.{w}.weight"].T
                assert np.array_equal(f[q + w][e], want), f"{q + w}[{e}]"
                checks += 1
    assert np.array_equal(f["final_gain"][...], o["model.norm.weight"])
print(f"converted tensors equal the state dict's (transposed), {checks} checked; interleaved RoPE undone exactly")
PY
    [ $? -eq 0 ] || exit 1
    for bad in extra garbage; do
      "$py" "$conv" "$out/$bad.safetensors" --config "$out/hf/config.json" --out "$out/$bad.h5" > "$out/$bad.log" 2>&1
      code=$?
      cat "$out/$bad.log"
      [ $code -eq 2 ] || fail "converting $bad.safetensors exited $code, expected 2"
      [ ! -e "$out/$bad.h5" ] || fail "$bad.h5 was written"
    done
    grep -q "q_proj.bias" "$out/extra.log" || fail "the refusal does not name the extra tensor"
    grep -q "not a safetensors file\|not JSON" "$out/garbage.log" || fail "the refusal does not say the file is not safetensors"
    if ! "$py" -c "import torch" 2>/dev/null; then
      : > "$out/model.bin"
      "$py" "$conv" "$out/model.bin" --config "$out/hf/config.json" --out "$out/bin.h5" > "$out/bin.log" 2>&1
      [ $? -eq 2 ] && grep -q "needs torch" "$out/bin.log" || { cat "$out/bin.log"; fail "a .bin without torch is not refused clearly"; }
    fi
    cat > "$out/mixtral.toml" <<TOML
# The synthetic Mixtral-style model converted above.
[model]
layers = 2
hidden = 32
heads = 4
kv_heads = 2
ffn = "moe"
ffn_hidden = 24
experts = 4
top_k = 2
activation = "swiglu"
norm = "rmsnorm"
rope_theta = 1e6
[workload]
batch = 3
prompt = 5
decode_steps = 2
[verify]
mode = "reference"
sample = 3
TOML
    run_moeproxy "$out/mixtral.toml" "$out/run.h5" "$out/mixtral.h5"
    "$py" "$src/analysis/moeproxy-numpy-model" "$out/run.h5" --tolerance 1e-4 \
      || fail "the NumPy model disagrees with the run from the converted checkpoint"
    # float16 datasets are widened on reading, by moeproxy and NumPy alike.
    "$py" "$conv" "$out/hf" --dtype float16 --out "$out/mixtral-f16.h5" > /dev/null 2>&1 || fail "convert --dtype float16 failed"
    run_moeproxy "$out/mixtral.toml" "$out/run-f16.h5" "$out/mixtral-f16.h5"
    "$py" "$src/analysis/moeproxy-numpy-model" "$out/run-f16.h5" --tolerance 1e-4 \
      || fail "the NumPy model disagrees with the run from the float16 checkpoint" ;;
  *) fail "unknown case" ;;
esac
echo "ok ($case_name)"
