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

// A [rows, cols] weight in the run's storage precision; `fill` writes its fp32 values.
template <class Fill>
StoredMatrix stored_matrix(const ExecSpace& space, const ModelConfig& cfg, const std::string& label, int rows, int cols,
                           Fill&& fill) {
  Matrix values(label, rows, cols);
  fill(values);
  if (cfg.precision == Precision::fp32) return ConstMatrix(values);
  HalfMatrix stored(label, rows, cols);
  round_into(space, values, stored);
  return ConstHalfMatrix(stored);
}

// `count` [rows, cols] weights (one per local expert); `fill(m, e)` writes the fp32 values
// of matrix e. For binary16 one fp32 matrix at a time is generated and rounded.
template <class Fill>
StoredStack stored_stack(const ExecSpace& space, const ModelConfig& cfg, const std::string& label, int count, int rows,
                         int cols, Fill&& fill) {
  StoredStack s;
  if (cfg.precision == Precision::fp32) {
    s.f32 = Stack(label, count, rows, cols);
    for (int e = 0; e < count; ++e) fill(Matrix(Kokkos::subview(s.f32, e, Kokkos::ALL, Kokkos::ALL)), e);
    return s;
  }
  s.f16 = HalfStack(label, count, rows, cols);
  Matrix values(label, rows, cols);
  for (int e = 0; e < count; ++e) {
    fill(values, e);
    round_into(space, values, Kokkos::subview(s.f16, e, Kokkos::ALL, Kokkos::ALL));
  }
  return s;
}

}  // namespace

std::uint64_t LayerWeights::bytes() const {
  return view_bytes(attn_norm.gain.span() + attn_norm.bias.span() + ffn_norm.gain.span() + ffn_norm.bias.span() +
                    router.span()) +
         wq.bytes() + wk.bytes() + wv.bytes() + wo.bytes() + w1.bytes() + w3.bytes() + w2.bytes();
}

std::uint64_t ModelWeights::bytes() const {
  std::uint64_t total = view_bytes(final_norm.gain.span() + final_norm.bias.span());
  for (const auto& l : layers) total += l.bytes();
  return total;
}

KvRange kv_heads_of(const ModelConfig& cfg, int head_begin, int head_count) {
  const int group = cfg.heads / cfg.effective_kv_heads();
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
    const float s_d = fan_in_scale(cfg.hidden);
    lw.wq = stored_matrix(space, cfg, "moeproxy::weights::wq", cfg.hidden, heads * dims, [&](const Matrix& m) {
      fill_tensor(space, m, cfg.seed, TensorKind::wq, l, 0, whole, head_axis(shard.head_begin), s_d);
    });
    lw.wk = stored_matrix(space, cfg, "moeproxy::weights::wk", cfg.hidden, kv_heads * dims, [&](const Matrix& m) {
      fill_tensor(space, m, cfg.seed, TensorKind::wk, l, 0, whole, head_axis(kv.begin), s_d);
    });
    lw.wv = stored_matrix(space, cfg, "moeproxy::weights::wv", cfg.hidden, kv_heads * dims, [&](const Matrix& m) {
      fill_tensor(space, m, cfg.seed, TensorKind::wv, l, 0, whole, head_axis(kv.begin), s_d);
    });
    lw.wo = stored_matrix(space, cfg, "moeproxy::weights::wo", heads * dims, cfg.hidden, [&](const Matrix& m) {
      fill_tensor(space, m, cfg.seed, TensorKind::wo, l, 0, head_axis(shard.head_begin), whole,
                  fan_in_scale(cfg.q_width()));
    });
    lw.ffn_norm = make_norm(space, cfg, TensorKind::norm2_gain, TensorKind::norm2_bias, l, "ffn_norm");
    if (cfg.is_moe()) {
      lw.router = Matrix("moeproxy::weights::router", cfg.hidden, cfg.experts);
      fill_tensor(space, lw.router, cfg.seed, TensorKind::router, l, 0, 0, 0, s_d);
    }
    lw.expert_begin = expert_begin;
    lw.w1 = stored_stack(space, cfg, "moeproxy::weights::w1", experts, cfg.hidden, f, [&](const Matrix& m, int e) {
      fill_tensor(space, m, cfg.seed, TensorKind::w1, l, expert_begin + e, 0, f_begin, s_d);
    });
    lw.w2 = stored_stack(space, cfg, "moeproxy::weights::w2", experts, f, cfg.hidden, [&](const Matrix& m, int e) {
      fill_tensor(space, m, cfg.seed, TensorKind::w2, l, expert_begin + e, f_begin, 0, fan_in_scale(cfg.ffn_hidden));
    });
    if (cfg.activation == Activation::swiglu)
      lw.w3 = stored_stack(space, cfg, "moeproxy::weights::w3", experts, cfg.hidden, f, [&](const Matrix& m, int e) {
        fill_tensor(space, m, cfg.seed, TensorKind::w3, l, expert_begin + e, 0, f_begin, s_d);
      });
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
