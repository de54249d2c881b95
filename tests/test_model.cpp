// The Kokkos forward against the double-precision host reference, and its invariants.
#include <catch2/catch.hpp>

#include <algorithm>

#include "moeproxy/core/model.hpp"
#include "moeproxy/core/reference.hpp"
#include "moeproxy/core/weights.hpp"
#include "test_helpers.hpp"

using namespace moeproxy;
using moeproxy::testing::flatten;

namespace {

struct Outputs {
  std::vector<float> prefill, decode;  // decode rows b * steps + g, like the reference
  std::vector<std::uint64_t> expert_tokens;
};

Outputs run(const ModelConfig& m, const WorkloadConfig& w, SequenceSlice slice) {
  ExecSpace space;
  Transformer model(space, m, w, slice);
  PhaseTable pre(m.layers), dec(m.layers);
  Outputs o;
  const Matrix y = model.prefill(pre);
  o.prefill = flatten(y);
  const int d = m.hidden;
  Matrix x("x", slice.count, d);
  auto hx = Kokkos::create_mirror_view(x);
  for (int b = 0; b < slice.count; ++b)
    for (int j = 0; j < d; ++j) hx(b, j) = o.prefill[((b + 1) * w.prompt - 1) * d + j];
  Kokkos::deep_copy(x, hx);
  o.decode.resize(static_cast<std::size_t>(slice.count) * w.decode_steps * d);
  for (int g = 0; g < w.decode_steps; ++g) {
    const Matrix out = model.decode_step(x, g, dec);
    Kokkos::deep_copy(x, out);
    const std::vector<float> step = flatten(out);
    for (int b = 0; b < slice.count; ++b)
      std::copy_n(step.begin() + b * d, d, o.decode.begin() + (b * w.decode_steps + g) * d);
  }
  o.expert_tokens = model.expert_tokens();
  CHECK(pre.total() > 0.0);
  CHECK(dec.total() > 0.0);
  return o;
}

ModelConfig tiny_moe() {
  ModelConfig m;
  m.layers = 2;
  m.hidden = 48;
  m.heads = 6;
  m.head_dim = 12;
  m.kv_heads = 2;
  m.ffn_hidden = 40;
  m.experts = 6;
  m.top_k = 3;
  return m;
}

WorkloadConfig small_workload() {
  WorkloadConfig w;
  w.batch = 3;
  w.prompt = 7;
  w.decode_steps = 3;
  return w;
}

void check_against_reference(const ModelConfig& m, const WorkloadConfig& w) {
  const Outputs got = run(m, w, SequenceSlice{0, w.batch, w.batch});
  const ReferenceOutput ref = reference_forward(m, w, 0, w.batch, w.batch);
  CHECK(max_relative_error(got.prefill, ref.prefill) < 1e-5);
  CHECK(max_relative_error(got.decode, ref.decode) < 1e-5);
}

// An fp16 run against the reference that rounds what the run stores (docs/model.md,
// Precision): within the fp16 tolerance, and closer to it than to the fp32 reference, so that
// the reference's roundings are the ones the run makes.
void check_fp16_against_reference(ModelConfig m, const WorkloadConfig& w) {
  m.precision = Precision::fp16;
  const Outputs got = run(m, w, SequenceSlice{0, w.batch, w.batch});
  const ReferenceOutput ref = reference_forward(m, w, 0, w.batch, w.batch);
  const double tolerance = verification_tolerance(Precision::fp16);
  const double err = std::max(max_relative_error(got.prefill, ref.prefill), max_relative_error(got.decode, ref.decode));
  CHECK(err < tolerance);
  ModelConfig m32 = m;
  m32.precision = Precision::fp32;
  const ReferenceOutput ref32 = reference_forward(m32, w, 0, w.batch, w.batch);
  const double err32 =
      std::max(max_relative_error(got.prefill, ref32.prefill), max_relative_error(got.decode, ref32.decode));
  CHECK(err < err32);
}

// Generated weights, except that layer `tied`'s router is zero: all its logits tie.
class TiedRouter : public WeightSource {
 public:
  TiedRouter(const ModelConfig& m, int tied) : generated_(m), tied_(tied) {}
  void read(const TensorRef& t, const IndexSpans& rows, const IndexSpans& cols, float* out) const override {
    generated_.read(t, rows, cols, out);
    if (t.kind == TensorKind::router && t.layer == tied_)
      std::fill(out, out + total_count(rows) * total_count(cols), 0.0f);
  }
  std::string describe() const override { return "generated, one router zero"; }

 private:
  GeneratedWeights generated_;
  int tied_;
};

bool all_are(const std::vector<char>& flags, char value) {
  return std::all_of(flags.begin(), flags.end(), [value](char f) { return f == value; });
}

}  // namespace

TEST_CASE("model: the reference leaves out the rows from a near tie in learned routing on", "[model][moe]") {
  const ModelConfig m = tiny_moe();
  const WorkloadConfig w = small_workload();
  const std::size_t rows = static_cast<std::size_t>(w.batch) * w.prompt, steps = static_cast<std::size_t>(w.batch) * w.decode_steps;
  const ReferenceOutput decided = reference_forward(m, w, 0, w.batch, w.batch);
  REQUIRE(decided.prefill_determined.size() == rows);
  REQUIRE(decided.decode_determined.size() == steps);
  CHECK(all_are(decided.prefill_determined, 1));
  CHECK(all_are(decided.decode_determined, 1));
  // Every token ties in layer 1 from position 0: nothing is determined.
  const TiedRouter tied(m, 1);
  const ReferenceOutput undecided = reference_forward(m, w, 0, w.batch, w.batch, &tied);
  CHECK(all_are(undecided.prefill_determined, 0));
  CHECK(all_are(undecided.decode_determined, 0));
  // Synthetic routing does not depend on the logits: determined whatever the router.
  WorkloadConfig uniform = w;
  uniform.routing = RoutingMode::uniform;
  CHECK(all_are(reference_forward(m, uniform, 0, w.batch, w.batch, &tied).decode_determined, 1));
  // The comparison reads only the flagged rows.
  CHECK(max_relative_error({1.0f, 1.0f, 5.0f, 5.0f}, {1.0, 1.0, 1.0, 1.0}, {1, 0}) == 0.0);
  CHECK(max_relative_error({1.0f, 1.0f, 5.0f, 5.0f}, {1.0, 1.0, 1.0, 1.0}, {1, 1}) == Approx(4.0));
}

TEST_CASE("model: MoE (SwiGLU, RMSNorm, GQA, RoPE, top-3 of 6) matches the reference", "[model]") {
  check_against_reference(tiny_moe(), small_workload());
}

TEST_CASE("model: dense (GELU, LayerNorm, no RoPE) matches the reference", "[model]") {
  ModelConfig m = tiny_moe();
  m.ffn = FfnKind::dense;
  m.activation = Activation::gelu;
  m.norm = NormKind::layernorm;
  m.rope = false;
  m.kv_heads = 0;
  check_against_reference(m, small_workload());
}

TEST_CASE("model: synthetic Zipf routing and unnormalised weights match the reference", "[model]") {
  ModelConfig m = tiny_moe();
  m.renormalize = false;
  WorkloadConfig w = small_workload();
  w.routing = RoutingMode::zipf;
  w.zipf_exponent = 1.5;
  check_against_reference(m, w);
  m.renormalize = true;
  w.routing = RoutingMode::learned;
  m.capacity_factor = 1.0;  // drops tokens: both implementations must drop the same ones
  check_against_reference(m, w);
}

TEST_CASE("model: fp16 storage matches the reference with the same roundings", "[model][fp16]") {
  check_fp16_against_reference(tiny_moe(), small_workload());
  ModelConfig dense = tiny_moe();
  dense.ffn = FfnKind::dense;
  dense.activation = Activation::gelu;
  dense.norm = NormKind::layernorm;
  dense.rope = false;
  check_fp16_against_reference(dense, small_workload());
}

TEST_CASE("model: dropless expert token counts sum to tokens x top_k", "[model][moe]") {
  const ModelConfig m = tiny_moe();
  const WorkloadConfig w = small_workload();
  const Outputs o = run(m, w, SequenceSlice{0, w.batch, w.batch});
  REQUIRE(o.expert_tokens.size() == static_cast<std::size_t>(m.layers * m.experts));
  for (int l = 0; l < m.layers; ++l) {
    std::uint64_t sum = 0;
    for (int e = 0; e < m.experts; ++e) sum += o.expert_tokens[l * m.experts + e];
    CHECK(sum == static_cast<std::uint64_t>(w.batch * w.prompt * m.top_k));
  }
}

TEST_CASE("model: runs are bitwise deterministic", "[model]") {
  const Outputs a = run(tiny_moe(), small_workload(), SequenceSlice{0, 3, 3});
  const Outputs b = run(tiny_moe(), small_workload(), SequenceSlice{0, 3, 3});
  CHECK(a.prefill == b.prefill);
  CHECK(a.decode == b.decode);
}

TEST_CASE("model: a slice of sequences reproduces those rows of the whole batch", "[model]") {
  WorkloadConfig w = small_workload();
  w.batch = 4;
  w.routing = RoutingMode::uniform;
  const Outputs all = run(tiny_moe(), w, SequenceSlice{0, 4, 4});
  const Outputs part = run(tiny_moe(), w, SequenceSlice{2, 2, 4});
  const int d = tiny_moe().hidden;
  const std::size_t pre = static_cast<std::size_t>(w.prompt) * d, dec = static_cast<std::size_t>(w.decode_steps) * d;
  for (std::size_t i = 0; i < 2 * pre; ++i) REQUIRE(part.prefill[i] == Approx(all.prefill[2 * pre + i]).margin(1e-6));
  for (std::size_t i = 0; i < 2 * dec; ++i) REQUIRE(part.decode[i] == Approx(all.decode[2 * dec + i]).margin(1e-6));
}

TEST_CASE("model: the memory estimate equals what the Transformer allocates", "[model]") {
  // A shard with heads straddling two kv groups, a slice of each head's dimensions, some
  // experts, FFN columns and layers.
  ShardSpec part;
  part.head_begin = 2;
  part.head_count = 2;
  part.dim_begin = 3;
  part.dim_count = 3;
  part.expert_begin = 2;
  part.expert_count = 2;
  part.ffn_begin = 10;
  part.ffn_count = 20;
  part.layer_begin = 1;
  part.layer_count = 1;
  for (const ShardSpec& shard : {ShardSpec{}, part})
    for (FfnKind ffn : {FfnKind::moe, FfnKind::dense})
    for (Precision precision : {Precision::fp32, Precision::fp16}) {
      ModelConfig m = tiny_moe();
      m.ffn = ffn;
      m.precision = precision;
      for (const int decode_steps : {3, 60}) {  // prefill's or decode's scores are the larger
        WorkloadConfig w = small_workload();
        w.decode_steps = decode_steps;
        ExecSpace space;
        Transformer model(space, m, w, SequenceSlice{0, w.batch, w.batch}, shard);
        const MemoryEstimate e = estimate_memory(m, w, w.batch, shard);
        CHECK(e.weights == model.weight_bytes());
        CHECK(e.kv_cache == model.kv_cache_bytes());
        CHECK(e.activations == model.activation_bytes());
      }
    }
}

TEST_CASE("model: fp16 stores projections, experts and the KV cache in half the bytes", "[model][fp16]") {
  ModelConfig m = tiny_moe();
  const WorkloadConfig w = small_workload();
  const MemoryEstimate e32 = estimate_memory(m, w, w.batch);
  m.precision = Precision::fp16;
  const MemoryEstimate e16 = estimate_memory(m, w, w.batch);
  CHECK(2 * e16.kv_cache == e32.kv_cache);
  // Norm gains (2 per layer + final) and the router stay fp32.
  const std::uint64_t fp32_floats = static_cast<std::uint64_t>(m.hidden) * (2 * m.layers + 1) +
                                    static_cast<std::uint64_t>(m.layers) * m.hidden * m.experts;
  CHECK(2 * e16.weights == e32.weights + fp32_floats * sizeof(float));
  CHECK(e16.activations == e32.activations);
}

TEST_CASE("model: forward_flops counts projections, causal attention and experts", "[model]") {
  ModelConfig m;
  m.layers = 1;
  m.hidden = 8;
  m.heads = 2;
  m.ffn_hidden = 16;
  m.experts = 4;
  m.top_k = 2;
  // One sequence of 3 tokens from position 0: keys per query 1 + 2 + 3 = 6.
  const double proj = 2.0 * 3 * 8 * (2 * 8 + 2 * 8);
  const double attn = 4.0 * 2 * 4 * 6;
  const double ffn = 3 * (2.0 * 3 * 8 * 16 * 2) + 2.0 * 3 * 8 * 4;
  CHECK(forward_flops(m, 1, 3, 0) == Approx(proj + attn + ffn));
}

// Capacity drops depend on the rows routed together: two slices routed apart match the
// reference routing the same two groups, and the reference routing all rows at once (a
// verification grouped differently from the run) fails it.
TEST_CASE("model: capacity drops follow the route groups, and a reference grouped otherwise disagrees", "[model][moe]") {
  ModelConfig m = tiny_moe();
  m.capacity_factor = 1.0;
  WorkloadConfig w = small_workload();
  w.batch = 4;
  w.routing = RoutingMode::zipf;  // skewed: the busy experts overflow their capacity
  w.zipf_exponent = 1.5;
  const Outputs first = run(m, w, SequenceSlice{0, 2, 4}), second = run(m, w, SequenceSlice{2, 2, 4});
  Outputs got = first;
  got.prefill.insert(got.prefill.end(), second.prefill.begin(), second.prefill.end());
  got.decode.insert(got.decode.end(), second.decode.begin(), second.decode.end());
  const RouteGroups halves{{0, 2 * w.prompt}, {0, 2}};
  const ReferenceOutput grouped = reference_forward(m, w, 0, 4, 4, nullptr, halves);
  CHECK(max_relative_error(got.prefill, grouped.prefill) < 1e-5);
  CHECK(max_relative_error(got.decode, grouped.decode) < 1e-5);
  const ReferenceOutput whole = reference_forward(m, w, 0, 4, 4);
  const double tolerance = verification_tolerance(m.precision);
  CHECK(max_relative_error(got.prefill, whole.prefill) > 100 * tolerance);
  CHECK(max_relative_error(got.decode, whole.decode) > 100 * tolerance);
  // Dropless routing does not depend on the groups.
  m.capacity_factor = 0.0;
  CHECK(reference_forward(m, w, 0, 4, 4, nullptr, halves).prefill == reference_forward(m, w, 0, 4, 4).prefill);
}

TEST_CASE("model: the reference refuses route groups that do not start at 0 and ascend within its rows",
          "[model][moe]") {
  ModelConfig m = tiny_moe();
  m.capacity_factor = 1.0;
  const WorkloadConfig w = small_workload();
  CHECK_THROWS_AS(reference_forward(m, w, 0, 3, 3, nullptr, RouteGroups{{7}, {}}), std::invalid_argument);
  CHECK_THROWS_AS(reference_forward(m, w, 0, 3, 3, nullptr, RouteGroups{{0, 14, 7}, {}}), std::invalid_argument);
  CHECK_THROWS_AS(reference_forward(m, w, 0, 3, 3, nullptr, RouteGroups{{}, {0, 3}}), std::invalid_argument);
}
