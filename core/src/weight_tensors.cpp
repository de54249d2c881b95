#include "moeproxy/core/weight_source.hpp"

namespace moeproxy {

std::int64_t total_count(const IndexSpans& spans) {
  std::int64_t n = 0;
  for (const IndexSpan& s : spans) n += s.count;
  return n;
}

bool TensorShape::is_vector() const {
  switch (ref.kind) {
    case TensorKind::norm1_gain: case TensorKind::norm1_bias: case TensorKind::norm2_gain:
    case TensorKind::norm2_bias: case TensorKind::final_gain: case TensorKind::final_bias:
      return true;
    default:
      return false;
  }
}

std::vector<std::int64_t> TensorShape::stored_dims() const {
  if (is_vector()) return {cols};
  if (per_expert) return {experts, rows, cols};
  return {rows, cols};
}

std::string tensor_name(TensorKind kind, int layer) {
  const char* base = "";
  switch (kind) {
    case TensorKind::norm1_gain: base = "norm1_gain"; break;
    case TensorKind::norm1_bias: base = "norm1_bias"; break;
    case TensorKind::wq: base = "wq"; break;
    case TensorKind::wk: base = "wk"; break;
    case TensorKind::wv: base = "wv"; break;
    case TensorKind::wo: base = "wo"; break;
    case TensorKind::norm2_gain: base = "norm2_gain"; break;
    case TensorKind::norm2_bias: base = "norm2_bias"; break;
    case TensorKind::router: base = "router"; break;
    case TensorKind::w1: base = "w1"; break;
    case TensorKind::w3: base = "w3"; break;
    case TensorKind::w2: base = "w2"; break;
    case TensorKind::final_gain: return "final_gain";
    case TensorKind::final_bias: return "final_bias";
    case TensorKind::input: return "input";
    case TensorKind::synthetic_routing: return "synthetic_routing";
  }
  return "layers/" + std::to_string(layer) + "/" + base;
}

std::vector<TensorShape> weight_tensors(const ModelConfig& cfg) {
  std::vector<TensorShape> out;
  const std::int64_t d = cfg.hidden, q = cfg.q_width(), kv = cfg.kv_width(), f = cfg.ffn_hidden;
  const bool layernorm = cfg.norm == NormKind::layernorm;
  auto add = [&](TensorKind kind, int layer, std::int64_t rows, std::int64_t cols, bool per_expert = false) {
    TensorShape t;
    t.ref = TensorRef{kind, layer, 0};
    t.name = tensor_name(kind, layer);
    t.rows = rows;
    t.cols = cols;
    t.per_expert = per_expert;
    t.experts = per_expert ? cfg.experts : 1;
    out.push_back(t);
  };
  for (int l = 0; l < cfg.layers; ++l) {
    add(TensorKind::norm1_gain, l, 1, d);
    if (layernorm) add(TensorKind::norm1_bias, l, 1, d);
    add(TensorKind::wq, l, d, q);
    add(TensorKind::wk, l, d, kv);
    add(TensorKind::wv, l, d, kv);
    add(TensorKind::wo, l, q, d);
    add(TensorKind::norm2_gain, l, 1, d);
    if (layernorm) add(TensorKind::norm2_bias, l, 1, d);
    if (cfg.is_moe()) add(TensorKind::router, l, d, cfg.experts);
    add(TensorKind::w1, l, d, f, cfg.is_moe());
    if (cfg.activation == Activation::swiglu) add(TensorKind::w3, l, d, f, cfg.is_moe());
    add(TensorKind::w2, l, f, d, cfg.is_moe());
  }
  add(TensorKind::final_gain, 0, 1, d);
  if (layernorm) add(TensorKind::final_bias, 0, 1, d);
  return out;
}

}  // namespace moeproxy
