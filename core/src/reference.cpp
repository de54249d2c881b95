#include "moeproxy/core/reference.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>

#include "moeproxy/core/half.hpp"
#include "moeproxy/core/hash.hpp"
#include "moeproxy/core/model.hpp"
#include "moeproxy/core/weights.hpp"

namespace moeproxy {

namespace {

using Rows = std::vector<double>;  // row-major [rows, cols]

// A prefill input (always generated: a checkpoint holds no inputs).
double input_value(const ModelConfig& c, std::int64_t row, std::int64_t col) {
  return uniform_at(tensor_stream(c.seed, TensorKind::input, 0, 0), static_cast<std::uint64_t>(row),
                    static_cast<std::uint64_t>(col));
}

// The whole tensor [rows, cols] from the source.
std::vector<float> whole(const WeightSource& src, TensorKind kind, int layer, int expert, int rows, int cols) {
  std::vector<float> w(static_cast<std::size_t>(rows) * cols);
  src.read(TensorRef{kind, layer, expert}, {IndexSpan{0, rows}}, {IndexSpan{0, cols}}, w.data());
  return w;
}

// fp16 runs store the projections and experts in binary16 (the router stays fp32) and round
// those GEMMs' activation operands the same way; the products are then exact, so rounding
// here and summing in double gives what the fp32 accumulation approximates.
bool half_operands(const ModelConfig& c, TensorKind kind) {
  return c.precision == Precision::fp16 && kind != TensorKind::router;
}

// The value a stored activation takes: binary16 rounding of its fp32 value for fp16 runs.
double stored(const ModelConfig& c, double v) {
  return c.precision == Precision::fp16 ? round_to_half(static_cast<float>(v)) : v;
}

// y[t, :] = x[t, :] * W, W [in, out] the tensor (kind, layer, expert), in the run's storage
// precision (binary16 weights round the source's fp32 values, as weights.cpp stores them).
Rows matmul(const ModelConfig& c, const WeightSource& src, const Rows& x, int in, int out, TensorKind kind,
            int layer, int expert) {
  const std::size_t tokens = x.size() / in;
  const bool half = half_operands(c, kind);
  std::vector<double> w(static_cast<std::size_t>(in) * out);
  const std::vector<float> values = whole(src, kind, layer, expert, in, out);
  for (std::size_t i = 0; i < values.size(); ++i) w[i] = half ? round_to_half(values[i]) : values[i];
  Rows y(tokens * out, 0.0);
  for (std::size_t t = 0; t < tokens; ++t)
    for (int i = 0; i < in; ++i) {
      const double xi = half ? stored(c, x[t * in + i]) : x[t * in + i];
      for (int j = 0; j < out; ++j) y[t * out + j] += xi * w[static_cast<std::size_t>(i) * out + j];
    }
  return y;
}

Rows norm(const ModelConfig& c, const WeightSource& src, const Rows& x, TensorKind gain, TensorKind bias,
         int layer) {
  const int d = c.hidden;
  const std::vector<float> g = whole(src, gain, layer, 0, 1, d);
  const std::vector<float> bs = c.norm == NormKind::layernorm ? whole(src, bias, layer, 0, 1, d) : std::vector<float>();
  Rows y(x.size());
  for (std::size_t t = 0; t < x.size() / d; ++t) {
    const double* r = &x[t * d];
    double mean = 0.0;
    if (c.norm == NormKind::layernorm) {
      for (int j = 0; j < d; ++j) mean += r[j];
      mean /= d;
    }
    double sq = 0.0;
    for (int j = 0; j < d; ++j) sq += (r[j] - mean) * (r[j] - mean);
    const double inv = 1.0 / std::sqrt(sq / d + c.norm_eps);
    for (int j = 0; j < d; ++j) {
      double v = (r[j] - mean) * inv * g[j];
      if (c.norm == NormKind::layernorm) v += bs[j];
      y[t * d + j] = v;
    }
  }
  return y;
}

void rope(const ModelConfig& c, Rows& x, int heads, int pos) {
  const int hd = c.effective_head_dim(), half = hd / 2;
  for (int h = 0; h < heads; ++h)
    for (int p = 0; p < half; ++p) {
      const double angle = pos * std::pow(c.rope_theta, -2.0 * p / hd);
      double& a = x[h * hd + p];
      double& b = x[h * hd + p + half];
      const double x1 = a, x2 = b;
      a = x1 * std::cos(angle) - x2 * std::sin(angle);
      b = x2 * std::cos(angle) + x1 * std::sin(angle);
    }
}

double act(Activation a, double v) {
  if (a == Activation::swiglu) return v / (1.0 + std::exp(-v));
  return 0.5 * v * (1.0 + std::tanh(std::sqrt(2.0 / M_PI) * (v + 0.044715 * v * v * v)));
}

// FFN of one expert (or the dense MLP, expert 0) on rows h.
Rows expert_ffn(const ModelConfig& c, const WeightSource& src, const Rows& h, int layer, int expert) {
  Rows a = matmul(c, src, h, c.hidden, c.ffn_hidden, TensorKind::w1, layer, expert);
  if (c.activation == Activation::swiglu) {
    const Rows g = matmul(c, src, h, c.hidden, c.ffn_hidden, TensorKind::w3, layer, expert);
    for (std::size_t i = 0; i < a.size(); ++i) a[i] = act(c.activation, a[i]) * g[i];
  } else {
    for (double& v : a) v = act(c.activation, v);
  }
  return matmul(c, src, a, c.ffn_hidden, c.hidden, TensorKind::w2, layer, expert);
}

// Expert choices for one token: learned (softmax, top-k, renormalise) or synthetic. Returns
// the expert the run may have chosen instead, where the learned choice is not determined at
// the run's precision: the best one left out, when it and the k-th chosen are no further
// apart than the verification tolerance of the largest logit, a difference the run's
// rounding can reverse; -1 otherwise.
int choose(const ModelConfig& c, const WorkloadConfig& w, const double* logits, int layer,
            std::int64_t token, std::vector<int>& idx, std::vector<double>& wt) {
  const int E = c.experts, k = c.top_k;
  idx.assign(k, -1);
  wt.assign(k, 1.0 / k);
  if (w.routing != RoutingMode::learned) {
    const double s = w.routing == RoutingMode::zipf ? w.zipf_exponent : 0.0;
    std::vector<double> cdf(E);
    double total = 0.0, acc = 0.0;
    for (int e = 0; e < E; ++e) total += std::pow(e + 1.0, -s);
    for (int e = 0; e < E; ++e) cdf[e] = (acc += std::pow(e + 1.0, -s) / total);
    const std::uint64_t stream = tensor_stream(c.seed, TensorKind::synthetic_routing, layer, 0);
    for (int j = 0; j < k; ++j) {
      for (int a = 0; a < 64 && idx[j] < 0; ++a) {
        const double u = 0.5 * (uniform_at(stream, static_cast<std::uint64_t>(token), static_cast<std::uint64_t>(j * 64 + a)) + 1.0);
        int e = 0;
        while (e < E - 1 && cdf[e] <= u) ++e;
        if (std::find(idx.begin(), idx.begin() + j, e) == idx.begin() + j) idx[j] = e;
      }
      for (int e = 0; idx[j] < 0 && e < E; ++e)
        if (std::find(idx.begin(), idx.begin() + j, e) == idx.begin() + j) idx[j] = e;
    }
    return -1;
  }
  const double mx = *std::max_element(logits, logits + E);
  double sum = 0.0;
  for (int e = 0; e < E; ++e) sum += std::exp(logits[e] - mx);
  double picked = 0.0;
  for (int j = 0; j < k; ++j) {
    int best = -1;
    for (int e = 0; e < E; ++e)
      if (std::find(idx.begin(), idx.begin() + j, e) == idx.begin() + j &&
          (best < 0 || logits[e] > logits[best]))
        best = e;
    idx[j] = best;
    wt[j] = std::exp(logits[best] - mx) / sum;
    picked += wt[j];
  }
  if (c.renormalize)
    for (double& v : wt) v /= picked;
  int left_out = -1;
  double largest = 0.0;
  for (int e = 0; e < E; ++e) {
    largest = std::max(largest, std::abs(logits[e]));
    if (std::find(idx.begin(), idx.end(), e) == idx.end() && (left_out < 0 || logits[e] > logits[left_out])) left_out = e;
  }
  if (left_out < 0) return -1;
  return logits[idx[k - 1]] - logits[left_out] <= verification_tolerance(c.precision) * largest ? left_out : -1;
}

struct State {
  // Per layer: keys and values of every position so far, [seq][pos][kv_width].
  std::vector<std::vector<Rows>> k, v;
  // Per sequence: the first position whose routing is not determined (a near tie, choose, or
  // a later row of a tie's group under a binding capacity); its row and all later ones, which
  // attend to it or follow from it, are not determined either.
  std::vector<int> first_tie;
};

// One layer over rows x (row r = sequence r / n, position pos0 + r % n), in place; the
// router sees the rows in groups starting at `group_starts` (empty: one group).
void layer(const ModelConfig& c, const WorkloadConfig& w, const WeightSource& src, int l, Rows& x, int n,
           int pos0, const std::vector<std::int64_t>& token_ids, const std::vector<int>& group_starts, State& st) {
  const int d = c.hidden, hd = c.effective_head_dim(), H = c.heads, Hkv = c.effective_kv_heads();
  const int tokens = static_cast<int>(x.size() / d);
  Rows h = norm(c, src, x, TensorKind::norm1_gain, TensorKind::norm1_bias, l);
  Rows q = matmul(c, src, h, d, c.q_width(), TensorKind::wq, l, 0);
  Rows k = matmul(c, src, h, d, c.kv_width(), TensorKind::wk, l, 0);
  Rows v = matmul(c, src, h, d, c.kv_width(), TensorKind::wv, l, 0);
  Rows attn(static_cast<std::size_t>(tokens) * c.q_width(), 0.0);
  for (int r = 0; r < tokens; ++r) {
    const int b = r / n, pos = pos0 + r % n;
    Rows qr(q.begin() + static_cast<std::ptrdiff_t>(r) * c.q_width(), q.begin() + static_cast<std::ptrdiff_t>(r + 1) * c.q_width());
    Rows kr(k.begin() + static_cast<std::ptrdiff_t>(r) * c.kv_width(), k.begin() + static_cast<std::ptrdiff_t>(r + 1) * c.kv_width());
    if (c.rope) {
      rope(c, qr, H, pos);
      rope(c, kr, Hkv, pos);
    }
    std::copy(qr.begin(), qr.end(), q.begin() + static_cast<std::ptrdiff_t>(r) * c.q_width());
    st.k[l][b].resize(static_cast<std::size_t>(pos + 1) * c.kv_width());
    st.v[l][b].resize(static_cast<std::size_t>(pos + 1) * c.kv_width());
    // The KV cache holds binary16 in fp16 runs: keys after RoPE, values as projected.
    for (int j = 0; j < c.kv_width(); ++j) {
      const std::size_t at = static_cast<std::size_t>(pos) * c.kv_width() + j;
      st.k[l][b][at] = stored(c, kr[j]);
      st.v[l][b][at] = stored(c, v[static_cast<std::size_t>(r) * c.kv_width() + j]);
    }
  }
  const double scale = 1.0 / std::sqrt(static_cast<double>(hd));
  for (int r = 0; r < tokens; ++r) {
    const int b = r / n, pos = pos0 + r % n;
    for (int hh = 0; hh < H; ++hh) {
      const int kvh = hh / (H / Hkv);
      std::vector<double> s(pos + 1);
      for (int j = 0; j <= pos; ++j) {
        double acc = 0.0;
        for (int e = 0; e < hd; ++e)
          acc += q[static_cast<std::size_t>(r) * c.q_width() + hh * hd + e] *
                 st.k[l][b][static_cast<std::size_t>(j) * c.kv_width() + kvh * hd + e];
        s[j] = acc * scale;
      }
      const double mx = *std::max_element(s.begin(), s.end());
      double sum = 0.0;
      for (double& e : s) sum += (e = std::exp(e - mx));
      for (int e = 0; e < hd; ++e) {
        double acc = 0.0;
        for (int j = 0; j <= pos; ++j) acc += s[j] * st.v[l][b][static_cast<std::size_t>(j) * c.kv_width() + kvh * hd + e];
        attn[static_cast<std::size_t>(r) * c.q_width() + hh * hd + e] = acc / sum;
      }
    }
  }
  const Rows o = matmul(c, src, attn, c.q_width(), d, TensorKind::wo, l, 0);
  for (std::size_t i = 0; i < x.size(); ++i) x[i] += o[i];

  h = norm(c, src, x, TensorKind::norm2_gain, TensorKind::norm2_bias, l);
  if (!c.is_moe()) {
    const Rows y = expert_ffn(c, src, h, l, 0);
    for (std::size_t i = 0; i < x.size(); ++i) x[i] += y[i];
    return;
  }
  const Rows logits = matmul(c, src, h, d, c.experts, TensorKind::router, l, 0);
  std::vector<int> starts = group_starts.empty() ? std::vector<int>{0} : group_starts;
  starts.push_back(tokens);
  std::vector<int> idx;
  std::vector<double> wt;
  std::vector<std::vector<int>> rows_of(c.experts);            // token rows per expert, slot order
  std::vector<std::vector<double>> weight_of(c.experts);
  for (std::size_t g = 0; g + 1 < starts.size(); ++g) {
    const int size = starts[g + 1] - starts[g];
    const int capacity = c.capacity_factor > 0.0
                             ? static_cast<int>(std::ceil(c.capacity_factor * size * c.top_k / c.experts))
                             : -1;
    std::vector<int> kept(c.experts, 0), wanted(c.experts, 0);
    struct Tie {
      int row, chosen, instead;
    };
    std::vector<Tie> ties;
    for (int t = starts[g]; t < starts[g + 1]; ++t) {
      const int instead = choose(c, w, &logits[static_cast<std::size_t>(t) * c.experts], l, token_ids[t], idx, wt);
      if (instead >= 0) ties.push_back({t, idx[c.top_k - 1], instead});
      for (int j = 0; j < c.top_k; ++j) {
        ++wanted[idx[j]];
        if (capacity >= 0 && kept[idx[j]] >= capacity) continue;
        ++kept[idx[j]];
        rows_of[idx[j]].push_back(t);
        weight_of[idx[j]].push_back(wt[j]);
      }
    }
    // A tied row is undetermined; with a capacity that binds either expert of the tie (the
    // other would overflow, or the chosen one dropped rows a freed slot would keep), so is
    // every later row of its group, whose drops the tie decides.
    auto undetermined = [&](int row) {
      int& first = st.first_tie[static_cast<std::size_t>(row / n)];
      first = std::min(first, pos0 + row % n);
    };
    for (const Tie& tie : ties) {
      undetermined(tie.row);
      if (capacity >= 0 && (wanted[tie.instead] >= capacity || wanted[tie.chosen] > capacity))
        for (int r = tie.row + 1; r < starts[g + 1]; ++r) undetermined(r);
    }
  }
  Rows y(x.size(), 0.0);
  for (int e = 0; e < c.experts; ++e) {
    if (rows_of[e].empty()) continue;
    Rows he;
    for (int t : rows_of[e]) he.insert(he.end(), h.begin() + static_cast<std::ptrdiff_t>(t) * d, h.begin() + static_cast<std::ptrdiff_t>(t + 1) * d);
    const Rows ye = expert_ffn(c, src, he, l, e);
    for (std::size_t i = 0; i < rows_of[e].size(); ++i)
      for (int j = 0; j < d; ++j)
        y[static_cast<std::size_t>(rows_of[e][i]) * d + j] += weight_of[e][i] * ye[i * d + j];
  }
  for (std::size_t i = 0; i < x.size(); ++i) x[i] += y[i];
}

}  // namespace

ReferenceOutput reference_forward(const ModelConfig& c, const WorkloadConfig& w, int seq_begin,
                                  int count, int global_batch, const WeightSource* weights,
                                  const RouteGroups& groups) {
  const GeneratedWeights generated(c);
  const WeightSource& src = weights ? *weights : generated;
  const int d = c.hidden, S = w.prompt, G = w.decode_steps;
  auto check_starts = [](const std::vector<int>& starts, int rows, const char* phase) {
    bool ok = starts.empty() || starts.front() == 0;
    for (std::size_t i = 1; ok && i < starts.size(); ++i) ok = starts[i - 1] < starts[i];
    if (!ok || (!starts.empty() && starts.back() >= rows))
      throw std::invalid_argument(std::string("reference_forward: ") + phase +
                                  " route groups must start at 0 and ascend within the " + std::to_string(rows) +
                                  " rows");
  };
  check_starts(groups.prefill, count * S, "prefill");
  check_starts(groups.decode, count, "decode");
  State st;
  st.k.assign(c.layers, std::vector<Rows>(count));
  st.v.assign(c.layers, std::vector<Rows>(count));
  st.first_tie.assign(count, S + G);

  Rows x(static_cast<std::size_t>(count) * S * d);
  std::vector<std::int64_t> ids(static_cast<std::size_t>(count) * S);
  for (int r = 0; r < count * S; ++r) {
    ids[r] = static_cast<std::int64_t>(seq_begin) * S + r;
    for (int j = 0; j < d; ++j)
      x[static_cast<std::size_t>(r) * d + j] = input_value(c, ids[r], j);
  }
  for (int l = 0; l < c.layers; ++l) layer(c, w, src, l, x, S, 0, ids, groups.prefill, st);
  ReferenceOutput out;
  out.prefill = norm(c, src, x, TensorKind::final_gain, TensorKind::final_bias, 0);

  out.decode.resize(static_cast<std::size_t>(count) * G * d);
  Rows step_in(static_cast<std::size_t>(count) * d);
  for (int b = 0; b < count; ++b)
    std::copy_n(out.prefill.begin() + (static_cast<std::ptrdiff_t>(b) * S + S - 1) * d, d, step_in.begin() + static_cast<std::ptrdiff_t>(b) * d);
  for (int g = 0; g < G; ++g) {
    std::vector<std::int64_t> step_ids(count);
    for (int b = 0; b < count; ++b)
      step_ids[b] = static_cast<std::int64_t>(global_batch) * S + static_cast<std::int64_t>(g) * global_batch + seq_begin + b;
    for (int l = 0; l < c.layers; ++l) layer(c, w, src, l, step_in, 1, S + g, step_ids, groups.decode, st);
    step_in = norm(c, src, step_in, TensorKind::final_gain, TensorKind::final_bias, 0);
    for (int b = 0; b < count; ++b)
      std::copy_n(step_in.begin() + static_cast<std::ptrdiff_t>(b) * d, d,
                  out.decode.begin() + (static_cast<std::ptrdiff_t>(b) * G + g) * d);
  }
  for (int b = 0; b < count; ++b) {
    for (int i = 0; i < S; ++i) out.prefill_determined.push_back(i < st.first_tie[b] ? 1 : 0);
    for (int g = 0; g < G; ++g) out.decode_determined.push_back(S + g < st.first_tie[b] ? 1 : 0);
  }
  return out;
}

double reference_flops(const ModelConfig& model, const WorkloadConfig& workload, int count) {
  double total = forward_flops(model, count, workload.prompt, 0);
  for (int g = 0; g < workload.decode_steps; ++g) total += forward_flops(model, count, 1, workload.prompt + g);
  return total;
}

}  // namespace moeproxy

namespace moeproxy {

double max_relative_error(const std::vector<float>& got, const std::vector<double>& expected,
                          const std::vector<char>& rows) {
  if (got.size() != expected.size())
    throw std::invalid_argument("max_relative_error: " + std::to_string(got.size()) + " values against " +
                                std::to_string(expected.size()));
  const std::size_t width = rows.empty() ? 1 : got.size() / rows.size();
  double diff = 0.0, scale = 0.0;
  for (std::size_t i = 0; i < got.size(); ++i) {
    if (!rows.empty() && !rows[i / width]) continue;
    diff = std::max(diff, std::abs(static_cast<double>(got[i]) - expected[i]));
    scale = std::max(scale, std::abs(expected[i]));
  }
  return scale > 0.0 ? diff / scale : diff;
}

double verification_tolerance(Precision precision) {
  return precision == Precision::fp32 ? 1e-4 : 2e-3;
}

// int8 moves each element of a transferred row by at most scale / 2 = max|row| / 254, 3.9e-3
// of the row's largest value; a layer transfers a row twice (there and back), so to first
// order L layers add up to 2L / 254 (3.1e-2 for the 4 layers of tests/decks/tiny-moe8). That
// bound is the tolerance wherever the computation is continuous in the transferred rows: a
// dense FFN, or synthetic routing (uniform, zipf), whose expert choices do not depend on the
// activations. Measured on the test decks: 1.7e-3 to 5.4e-3 (docs/layouts.md). Learned
// routing is not continuous: where a token's k-th and (k+1)-th router scores nearly tie, the
// quantised rows of a later layer can swap its expert, and its row then differs by a sizeable
// part of an expert's output: 0.111 on tiny-moe8 (layers 3 and 4). There the tolerance is that
// worst measured case with a margin of about 2, 0.25, and a test of the codec itself needs
// synthetic routing: wrong rows (another token's, unscaled, misplaced) differ by the size of
// the rows themselves, far above 2L / 254.
double compression_tolerance(CommCompression compression, const ModelConfig& model, const WorkloadConfig& workload) {
  if (compression == CommCompression::none) return 0.0;
  const double quantisation = 2.0 * model.layers / 254.0;
  const bool continuous = !model.is_moe() || workload.routing != RoutingMode::learned;
  return continuous ? quantisation : std::max(quantisation, 0.25);
}

}  // namespace moeproxy
