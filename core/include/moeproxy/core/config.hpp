#pragma once
// The run description every layer of moeproxy shares. Plain C++ on purpose: io/ parses
// decks into it on the host compiler only (toml++ does not build under nvcc), and core/
// kernels read it without caring where it came from.

#include <cstdint>
#include <string>

namespace moeproxy {

enum class FfnKind { dense, moe };
enum class Activation { gelu, swiglu };
enum class NormKind { layernorm, rmsnorm };
enum class Precision { fp32, fp16 };
enum class RoutingMode { learned, uniform, zipf };
enum class CommBackend { automatic, nccl, mpi };
enum class VerifyMode { automatic, reference, file, none };

struct ModelConfig {
  int layers = 2;
  int hidden = 64;
  int heads = 4;
  int head_dim = 0;  // 0 = hidden / heads
  int kv_heads = 0;  // 0 = heads
  FfnKind ffn = FfnKind::moe;
  int ffn_hidden = 128;
  int experts = 4;
  int top_k = 2;
  bool renormalize = true;  // renormalise the top-k router weights to sum to one
  Activation activation = Activation::swiglu;
  NormKind norm = NormKind::rmsnorm;
  bool rope = true;
  double rope_theta = 10000.0;
  double norm_eps = 1e-5;
  double capacity_factor = 0.0;  // 0 = dropless
  Precision precision = Precision::fp32;
  std::uint64_t seed = 1234;
  std::string checkpoint;

  int effective_head_dim() const { return head_dim > 0 ? head_dim : hidden / heads; }
  int effective_kv_heads() const { return kv_heads > 0 ? kv_heads : heads; }
  int q_width() const { return heads * effective_head_dim(); }
  int kv_width() const { return effective_kv_heads() * effective_head_dim(); }
  bool is_moe() const { return ffn == FfnKind::moe; }
};

struct WorkloadConfig {
  int batch = 4;
  int prompt = 16;
  int decode_steps = 4;
  RoutingMode routing = RoutingMode::learned;
  double zipf_exponent = 1.2;  // only for RoutingMode::zipf
};

struct ParallelConfig {
  int dp = 1;
  int tp = 1;
  int pp = 1;
  int ep = 1;
  int attn_ranks = 0;
  int head_groups = 1;
  int dim_groups = 1;
  int micro_batches = 1;
  int ep_chunks = 1;  // pieces of an MoE step's routed rows, dispatched while the previous compute
  CommBackend comm = CommBackend::automatic;
};

struct OutputConfig {
  std::string file = "results/run.h5";
  bool dump_hidden = false;
};

struct VerifyConfig {
  VerifyMode mode = VerifyMode::automatic;
  int sample = 2;
  std::string file;  // reference HDF5 for VerifyMode::file
};

struct RunConfig {
  ModelConfig model;
  WorkloadConfig workload;
  ParallelConfig parallel;
  OutputConfig output;
  VerifyConfig verify;
  std::string deck_path;
  std::string deck_text;  // the deck as read, overrides applied as a trailer
};

const char* to_string(FfnKind v);
const char* to_string(Activation v);
const char* to_string(NormKind v);
const char* to_string(Precision v);
const char* to_string(CommBackend v);
const char* to_string(VerifyMode v);
std::string to_string(RoutingMode mode, double zipf_exponent);

}  // namespace moeproxy

#include <stdexcept>

namespace moeproxy {

// Bad input from the user (deck, overrides, layout): the message says what and where and
// what would be valid. The application maps it to exit code 2.
struct InputError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

}  // namespace moeproxy
