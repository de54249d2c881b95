#include "moeproxy/core/weights.hpp"

#include <cmath>
#include <string>

#include "rows_kernel.hpp"

namespace moeproxy {

void fill_tensor(const ExecSpace& space, const Matrix& m, std::uint64_t seed, TensorKind kind,
                 int layer, int expert, const AxisMap& rows, const AxisMap& cols, float scale,
                 float offset) {
  const std::uint64_t stream = tensor_stream(seed, kind, layer, expert);
  for_each_in_rows(
      space, "moeproxy::weights::fill_matrix", static_cast<int>(m.extent(0)), static_cast<int>(m.extent(1)),
      KOKKOS_LAMBDA(const int i, const int j) {
        m(i, j) = scaled_uniform(uniform_at(stream, static_cast<std::uint64_t>(rows(i)),
                                            static_cast<std::uint64_t>(cols(j))),
                                 scale, offset);
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
        v(j) = scaled_uniform(uniform_at(stream, 0, static_cast<std::uint64_t>(col0 + j)), scale, offset);
      });
}

namespace {

float fan_in_scale(int fan_in) { return static_cast<float>(1.0 / std::sqrt(static_cast<double>(fan_in))); }

}  // namespace

GeneratedValue generated_value(const ModelConfig& cfg, TensorKind kind) {
  switch (kind) {
    case TensorKind::norm1_gain: case TensorKind::norm2_gain: case TensorKind::final_gain:
      return GeneratedValue{0.1f, 1.0f};
    case TensorKind::norm1_bias: case TensorKind::norm2_bias: case TensorKind::final_bias:
      return GeneratedValue{0.1f, 0.0f};
    case TensorKind::wq: case TensorKind::wk: case TensorKind::wv: case TensorKind::router:
    case TensorKind::w1: case TensorKind::w3:
      return GeneratedValue{fan_in_scale(cfg.hidden), 0.0f};
    case TensorKind::wo:
      return GeneratedValue{fan_in_scale(cfg.q_width()), 0.0f};
    case TensorKind::w2:
      return GeneratedValue{fan_in_scale(cfg.ffn_hidden), 0.0f};
    case TensorKind::input: case TensorKind::synthetic_routing:
      break;
  }
  return GeneratedValue{};
}

void GeneratedWeights::read(const TensorRef& tensor, const IndexSpans& rows, const IndexSpans& cols,
                            float* out) const {
  const std::uint64_t stream = tensor_stream(cfg_.seed, tensor.kind, tensor.layer, tensor.expert);
  const GeneratedValue v = generated_value(cfg_, tensor.kind);
  for (const IndexSpan& r : rows)
    for (std::int64_t i = r.begin; i < r.begin + r.count; ++i)
      for (const IndexSpan& c : cols)
        for (std::int64_t j = c.begin; j < c.begin + c.count; ++j)
          *out++ = scaled_uniform(uniform_at(stream, static_cast<std::uint64_t>(i), static_cast<std::uint64_t>(j)),
                                  v.scale, v.offset);
}

std::string GeneratedWeights::describe() const {
  return "generated weights (seed " + std::to_string(cfg_.seed) + ")";
}

IndexSpans spans_of(const AxisMap& axis, std::int64_t n) {
  if (axis.head_dim == 0) return {IndexSpan{axis.begin, n}};
  IndexSpans spans;
  const std::int64_t width = 2 * axis.pairs;
  for (std::int64_t h = 0; h < n / width; ++h) {
    const std::int64_t head0 = (axis.begin + h) * axis.head_dim + axis.pair_begin;
    spans.push_back(IndexSpan{head0, axis.pairs});
    spans.push_back(IndexSpan{head0 + axis.head_dim / 2, axis.pairs});
  }
  return spans;
}

namespace {

// m = the block (rows, cols) of `tensor`: computed in place on the device for generated
// weights, else read into a host buffer and copied.
void load(const ExecSpace& space, const ModelConfig& cfg, const WeightSource* source, const Matrix& m,
          const TensorRef& tensor, const AxisMap& rows, const AxisMap& cols) {
  const std::optional<std::uint64_t> seed = source ? source->generated_seed() : cfg.seed;
  if (seed) {
    const GeneratedValue v = generated_value(cfg, tensor.kind);
    fill_tensor(space, m, *seed, tensor.kind, tensor.layer, tensor.expert, rows, cols, v.scale, v.offset);
    return;
  }
  HostMatrix host("moeproxy::weights::staging", m.extent(0), m.extent(1));
  source->read(tensor, spans_of(rows, m.extent(0)), spans_of(cols, m.extent(1)), host.data());
  Kokkos::deep_copy(m, host);
}

NormWeights make_norm(const ExecSpace& space, const ModelConfig& cfg, const WeightSource* source,
                      TensorKind gain_kind, TensorKind bias_kind, int layer, const char* label) {
  const AxisMap whole = AxisMap::contiguous(0);
  auto as_row = [](const Vector& v) { return Matrix(v.data(), 1, v.extent(0)); };
  NormWeights n;
  n.gain = Vector(std::string("moeproxy::weights::") + label + "_gain", cfg.hidden);
  load(space, cfg, source, as_row(n.gain), TensorRef{gain_kind, layer, 0}, whole, whole);
  if (cfg.norm == NormKind::layernorm) {
    n.bias = Vector(std::string("moeproxy::weights::") + label + "_bias", cfg.hidden);
    load(space, cfg, source, as_row(n.bias), TensorRef{bias_kind, layer, 0}, whole, whole);
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

std::vector<int> ShardSpec::experts_in(const ModelConfig& cfg, int layer) const {
  if (!placement.empty()) return placement_rank < 0 ? std::vector<int>{} : placement.experts(layer, placement_rank);
  std::vector<int> ids(expert_count < 0 ? cfg.experts : expert_count);
  for (std::size_t e = 0; e < ids.size(); ++e) ids[e] = expert_begin + static_cast<int>(e);
  return ids;
}

KvRange kv_heads_of(const ModelConfig& cfg, int head_begin, int head_count) {
  const int group = cfg.heads / cfg.effective_kv_heads();
  if (head_count == 0) return KvRange{head_begin / group, 0};  // a rank holding no attention
  const int first = head_begin / group, last = (head_begin + head_count - 1) / group;
  return KvRange{first, last - first + 1};
}

ModelWeights make_weights(const ExecSpace& space, const ModelConfig& cfg, const ShardSpec& shard,
                          int layer_begin, int layer_end, const WeightSource* source) {
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
  const int f_begin = shard.ffn_begin;
  const int f = shard.ffn_count < 0 ? cfg.ffn_hidden : shard.ffn_count;

  ModelWeights w;
  for (int l = layer_begin; l < layer_end; ++l) {
    LayerWeights lw;
    lw.attn_norm = make_norm(space, cfg, source, TensorKind::norm1_gain, TensorKind::norm1_bias, l, "attn_norm");
    // Values are loaded in fp32 and stored in the run's precision (binary16 rounds them once).
    auto attn = [&](const char* label, TensorKind kind, int rows, int cols, const AxisMap& row_map,
                    const AxisMap& col_map) {
      return stored_matrix(space, cfg, label, rows, cols, [&](const Matrix& m) {
        load(space, cfg, source, m, TensorRef{kind, l, 0}, row_map, col_map);
      });
    };
    lw.wq = attn("moeproxy::weights::wq", TensorKind::wq, cfg.hidden, heads * dims, whole, head_axis(shard.head_begin));
    lw.wk = attn("moeproxy::weights::wk", TensorKind::wk, cfg.hidden, kv_heads * dims, whole, head_axis(kv.begin));
    lw.wv = attn("moeproxy::weights::wv", TensorKind::wv, cfg.hidden, kv_heads * dims, whole, head_axis(kv.begin));
    lw.wo = attn("moeproxy::weights::wo", TensorKind::wo, heads * dims, cfg.hidden, head_axis(shard.head_begin), whole);
    lw.ffn_norm = make_norm(space, cfg, source, TensorKind::norm2_gain, TensorKind::norm2_bias, l, "ffn_norm");
    if (cfg.is_moe()) {
      lw.router = Matrix("moeproxy::weights::router", cfg.hidden, cfg.experts);
      load(space, cfg, source, lw.router, TensorRef{TensorKind::router, l, 0}, whole, whole);
    }
    lw.experts = cfg.is_moe() ? shard.experts_in(cfg, l) : std::vector<int>{0};
    const int experts = static_cast<int>(lw.experts.size());
    const AxisMap ffn_cols = AxisMap::contiguous(f_begin);
    auto ffn = [&](const char* label, TensorKind kind, int rows, int cols, const AxisMap& row_map,
                   const AxisMap& col_map) {
      return stored_stack(space, cfg, label, experts, rows, cols, [&](const Matrix& m, int e) {
        load(space, cfg, source, m, TensorRef{kind, l, lw.experts[e]}, row_map, col_map);
      });
    };
    lw.w1 = ffn("moeproxy::weights::w1", TensorKind::w1, cfg.hidden, f, whole, ffn_cols);
    lw.w2 = ffn("moeproxy::weights::w2", TensorKind::w2, f, cfg.hidden, ffn_cols, whole);
    if (cfg.activation == Activation::swiglu)
      lw.w3 = ffn("moeproxy::weights::w3", TensorKind::w3, cfg.hidden, f, whole, ffn_cols);
    w.layers.push_back(lw);
  }
  w.final_norm = make_norm(space, cfg, source, TensorKind::final_gain, TensorKind::final_bias, 0, "final_norm");
  return w;
}

void fill_inputs(const ExecSpace& space, const ModelConfig& cfg, int seq_begin, int prompt, const Matrix& x) {
  fill_tensor(space, x, cfg.seed, TensorKind::input, 0, 0, static_cast<std::int64_t>(seq_begin) * prompt, 0, 1.0f);
}

}  // namespace moeproxy
