#pragma once
// Measured kernel times for the performance model (docs/predict.md, "Kernel profiles"):
// `moeproxy calibrate` times each kernel of the forward pass at several sizes, and the model
// looks a kernel's time up at the size of the call it models instead of deriving it from a
// peak rate. Small kernels on a CPU are bound by fork/join, packing and fences, GEMMs by
// their shape: a single rate per kind (the roofline's efficiency) is off by 2x for them.
//
// Every profiled kernel has one size measure, computed by the functions in `kernel_size`
// for both the calibration and the model, so that the two count the same thing.

#include <map>
#include <string>
#include <utility>
#include <vector>

namespace moeproxy {

// Seconds of one call at increasing sizes. Between two measured sizes the time is
// interpolated log-log; below the smallest it is the smallest's (the fixed cost of a call
// is its floor); above the largest it grows in proportion to the size (the largest's rate).
struct KernelProfile {
  std::vector<std::pair<double, double>> points;  // (size, seconds), sizes strictly increasing

  bool empty() const { return points.empty(); }
  double seconds(double size) const;
};

// GEMM seconds over rows for square weights of several sizes. A [rows, inner] x [inner, cols]
// call takes, at its rows, the FLOP rate of the measured weights whose inner x cols brackets
// its own, interpolated log-log in the weight's elements (above the largest, the largest's
// rate; below the smallest, the smallest's time).
struct GemmProfile {
  std::vector<std::pair<double, KernelProfile>> by_weight;  // (inner x cols, profile over rows)

  bool empty() const { return by_weight.empty(); }
  double seconds(double rows, double inner, double cols) const;
};

// The profiled kernels by name (see kernel_size) and the GEMM.
struct KernelProfiles {
  std::map<std::string, KernelProfile> kernels;
  GemmProfile gemm;

  const KernelProfile* find(const std::string& name) const {
    const auto it = kernels.find(name);
    return it == kernels.end() || it->second.empty() ? nullptr : &it->second;
  }
};

// The names of the profiled kernels other than the GEMM, as machine files spell them.
inline const std::vector<std::string>& profiled_kernels() {
  static const std::vector<std::string> names = {"norm",    "rope",   "store_kv", "add",
                                                 "activate", "route", "permute",  "gather",
                                                 "combine", "attention_prefill", "attention_decode"};
  return names;
}

// The size of one call of each profiled kernel, in the element size `es` of its activations:
// bytes it reads and writes, except attention prefill (FLOPs). Names are the profile keys.
namespace kernel_size {
// "norm": RMSNorm or LayerNorm of [t, d].
inline double norm(double t, double d, double es) { return es * 2.0 * t * d; }
// "rope": rotary embedding in place on [t, width].
inline double rope(double t, double width, double es) { return es * 2.0 * t * width; }
// "store_kv": k and v rows [t, width] into the cache.
inline double store_kv(double t, double width, double es) { return es * 4.0 * t * width; }
// "add": x += y over [t, d].
inline double add(double t, double d, double es) { return es * 3.0 * t * d; }
// "activate": GELU on [rows, cols] (mats = 2) or SwiGLU a = silu(a) * b (mats = 3).
inline double activate(double rows, double cols, double mats, double es) { return es * mats * rows * cols; }
// "route": top-k of [t, experts] logits (or synthetic routing), indices and weights out.
inline double route(double t, double experts, double k, double es) { return es * t * experts + 8.0 * t * k; }
// "permute": a scan of the routed rows' expert indices per expert, the scatter, and the counts
// to the host.
inline double permute(double routed, double experts) { return 4.0 * routed * (experts + 2.0); }
// "gather": routed rows [routed, d] gathered from [t, d].
inline double gather(double routed, double d, double es) { return es * 2.0 * routed * d; }
// "combine": zero [t, d], then add the weighted routed rows [routed, d] into it.
inline double combine(double t, double routed, double d, double es) { return es * (routed * d + 2.0 * t * d); }
// "attention_prefill": FLOPs of causal attention over `keys` (query, key) pairs per head.
inline double attention_prefill(double seqs, double heads, double head_dim, double keys) {
  return 4.0 * seqs * heads * head_dim * keys;
}
// "attention_decode": one query per sequence: bytes of q, out and the cache read.
inline double attention_decode(double seqs, double q_width, double kv_width, double ctx, double es) {
  return es * (2.0 * seqs * q_width + 2.0 * seqs * ctx * kv_width);
}
}  // namespace kernel_size

}  // namespace moeproxy
