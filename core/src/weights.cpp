#include "moeproxy/core/weights.hpp"

#include <cmath>

namespace moeproxy {

void fill_tensor(const ExecSpace& space, const Matrix& m, std::uint64_t seed, TensorKind kind,
                 int layer, int expert, const AxisMap& rows, const AxisMap& cols, float scale,
                 float offset) {
  const std::uint64_t stream = tensor_stream(seed, kind, layer, expert);
  Kokkos::parallel_for(
      "moeproxy::weights::fill_matrix",
      Kokkos::MDRangePolicy<ExecSpace, Kokkos::Rank<2>>(space, {0, 0},
                                                        {m.extent(0), m.extent(1)}),
      KOKKOS_LAMBDA(const int i, const int j) {
        m(i, j) = offset + scale * uniform_at(stream, static_cast<std::uint64_t>(rows(i)),
                                              static_cast<std::uint64_t>(cols(j)));
      });
}

void fill_tensor(const ExecSpace& space, const Matrix& m, std::uint64_t seed, TensorKind kind,
                 int layer, int expert, std::int64_t row0, std::int64_t col0, float scale,
                 float offset) {
  fill_tensor(space, m, seed, kind, layer, expert, AxisMap::contiguous(row0), AxisMap::contiguous(col0),
              scale, offset);
}

void fill_tensor(const ExecSpace& space, const Vector& v, std::uint64_t seed, TensorKind kind,
                 int layer, int expert, std::int64_t col0, float scale, float offset) {
  const std::uint64_t stream = tensor_stream(seed, kind, layer, expert);
  Kokkos::parallel_for(
      "moeproxy::weights::fill_vector", Kokkos::RangePolicy<ExecSpace>(space, 0, v.extent(0)),
      KOKKOS_LAMBDA(const int j) {
        v(j) = offset + scale * uniform_at(stream, 0, static_cast<std::uint64_t>(col0 + j));
      });
}

namespace {

float fan_in_scale(int fan_in) { return static_cast<float>(1.0 / std::sqrt(static_cast<double>(fan_in))); }

NormWeights make_norm(const ExecSpace& space, const ModelConfig& cfg, TensorKind gain_kind,
                      TensorKind bias_kind, int layer, const char* label) {
  NormWeights n;
  n.gain = Vector(std::string("moeproxy::weights::") + label + "_gain", cfg.hidden);
  fill_tensor(space, n.gain, cfg.seed, gain_kind, layer, 0, 0, 0.1f, 1.0f);
  if (cfg.norm == NormKind::layernorm) {
    n.bias = Vector(std::string("moeproxy::weights::") + label + "_bias", cfg.hidden);
    fill_tensor(space, n.bias, cfg.seed, bias_kind, layer, 0, 0, 0.1f);
  }
  return n;
}

std::uint64_t view_bytes(std::size_t span) { return static_cast<std::uint64_t>(span) * sizeof(float); }

}  // namespace

std::uint64_t LayerWeights::bytes() const {
  return view_bytes(attn_norm.gain.span() + attn_norm.bias.span() + wq.span() + wk.span() +
                    wv.span() + wo.span() + ffn_norm.gain.span() + ffn_norm.bias.span() +
                    router.span() + w1.span() + w3.span() + w2.span());
}

std::uint64_t ModelWeights::bytes() const {
  std::uint64_t total = view_bytes(final_norm.gain.span() + final_norm.bias.span());
  for (const auto& l : layers) total += l.bytes();
  return total;
}

KvRange kv_heads_of(const ModelConfig& cfg, int head_begin, int head_count) {
  const int group = cfg.heads / cfg.effective_kv_heads();
  if (head_count == 0) return KvRange{head_begin / group, 0};  // a rank holding no attention
  const int first = head_begin / group, last = (head_begin + head_count - 1) / group;
  return KvRange{first, last - first + 1};
}

ModelWeights make_weights(const ExecSpace& space, const ModelConfig& cfg, const ShardSpec& shard,
                          int layer_begin, int layer_end) {
  const int hd = cfg.effective_head_dim(), dims = shard.head_dims(cfg);
  const int heads = shard.head_count < 0 ? cfg.heads : shard.head_count;
  const KvRange kv = kv_heads_of(cfg, shard.head_begin, heads);
  const int kv_heads = kv.count;
  // wq/wk/wv columns and wo rows: the shard's heads, each whole or a slice of its pairs.
  auto head_axis = [&](int first_head) {
    return shard.slices_dims() ? AxisMap::head_slice(first_head, hd, shard.dim_begin, shard.dim_count)
                               : AxisMap::contiguous(static_cast<std::int64_t>(first_head) * hd);
  };
  const AxisMap whole = AxisMap::contiguous(0);
  const int experts = cfg.is_moe() ? (shard.expert_count < 0 ? cfg.experts : shard.expert_count) : 1;
  const int expert_begin = cfg.is_moe() ? shard.expert_begin : 0;
  const int f_begin = shard.ffn_begin;
  const int f = shard.ffn_count < 0 ? cfg.ffn_hidden : shard.ffn_count;

  ModelWeights w;
  for (int l = layer_begin; l < layer_end; ++l) {
    LayerWeights lw;
    lw.attn_norm = make_norm(space, cfg, TensorKind::norm1_gain, TensorKind::norm1_bias, l, "attn_norm");
    lw.wq = Matrix("moeproxy::weights::wq", cfg.hidden, heads * dims);
    lw.wk = Matrix("moeproxy::weights::wk", cfg.hidden, kv_heads * dims);
    lw.wv = Matrix("moeproxy::weights::wv", cfg.hidden, kv_heads * dims);
    lw.wo = Matrix("moeproxy::weights::wo", heads * dims, cfg.hidden);
    const float s_d = fan_in_scale(cfg.hidden);
    fill_tensor(space, lw.wq, cfg.seed, TensorKind::wq, l, 0, whole, head_axis(shard.head_begin), s_d);
    fill_tensor(space, lw.wk, cfg.seed, TensorKind::wk, l, 0, whole, head_axis(kv.begin), s_d);
    fill_tensor(space, lw.wv, cfg.seed, TensorKind::wv, l, 0, whole, head_axis(kv.begin), s_d);
    fill_tensor(space, lw.wo, cfg.seed, TensorKind::wo, l, 0, head_axis(shard.head_begin), whole,
                fan_in_scale(cfg.q_width()));
    lw.ffn_norm = make_norm(space, cfg, TensorKind::norm2_gain, TensorKind::norm2_bias, l, "ffn_norm");
    if (cfg.is_moe()) {
      lw.router = Matrix("moeproxy::weights::router", cfg.hidden, cfg.experts);
      fill_tensor(space, lw.router, cfg.seed, TensorKind::router, l, 0, 0, 0, s_d);
    }
    lw.expert_begin = expert_begin;
    lw.w1 = decltype(lw.w1)("moeproxy::weights::w1", experts, cfg.hidden, f);
    lw.w2 = decltype(lw.w2)("moeproxy::weights::w2", experts, f, cfg.hidden);
    if (cfg.activation == Activation::swiglu)
      lw.w3 = decltype(lw.w3)("moeproxy::weights::w3", experts, cfg.hidden, f);
    for (int e = 0; e < experts; ++e) {
      const int ge = expert_begin + e;
      auto sub = [e](const auto& v) { return Matrix(Kokkos::subview(v, e, Kokkos::ALL, Kokkos::ALL)); };
      fill_tensor(space, sub(lw.w1), cfg.seed, TensorKind::w1, l, ge, 0, f_begin, s_d);
      fill_tensor(space, sub(lw.w2), cfg.seed, TensorKind::w2, l, ge, f_begin, 0,
                  fan_in_scale(cfg.ffn_hidden));
      if (cfg.activation == Activation::swiglu)
        fill_tensor(space, sub(lw.w3), cfg.seed, TensorKind::w3, l, ge, 0, f_begin, s_d);
    }
    w.layers.push_back(lw);
  }
  w.final_norm = make_norm(space, cfg, TensorKind::final_gain, TensorKind::final_bias, 0, "final_norm");
  return w;
}

Matrix make_inputs(const ExecSpace& space, const ModelConfig& cfg, int seq_begin, int count,
                   int prompt) {
  Matrix x("moeproxy::model::inputs", static_cast<std::size_t>(count) * prompt, cfg.hidden);
  fill_tensor(space, x, cfg.seed, TensorKind::input, 0, 0,
              static_cast<std::int64_t>(seq_begin) * prompt, 0, 1.0f);
  return x;
}

}  // namespace moeproxy
