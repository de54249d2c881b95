#pragma once
// The run description every layer of moeproxy shares. Plain C++ on purpose: io/ parses
// decks into it on the host compiler only (toml++ does not build under nvcc), and core/
// kernels read it without caring where it came from.

#include <cstdint>
#include <string>
#include <vector>

namespace moeproxy {

enum class FfnKind { dense, moe };
enum class Activation { gelu, swiglu };
enum class NormKind { layernorm, rmsnorm };
enum class Precision { fp32, fp16 };
enum class RoutingMode { learned, uniform, zipf };
enum class CommBackend { automatic, nccl, mpi };
// How activations travel on the compressed paths (parallel/compression.hpp).
enum class CommCompression { none, int8 };
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
  // Untimed passes (a prefill and one decode step each) before the timed ones, so that
  // first-call costs (a collective's first large message, first touch of buffers) stay out.
  int warmup = 1;
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
  int attn_replicas = 1;  // data-parallel replicas per replica group (failover buddies)
  int ep_chunks = 1;  // pieces of an MoE step's routed rows: each is dispatched while the previous computes
  CommBackend comm = CommBackend::automatic;
  CommCompression comm_compression = CommCompression::none;
  // Query heads per tensor-parallel rank (length tp, sum model.heads); empty = even split.
  std::vector<int> head_distribution;
  // Global experts per rank of the expert group: expert_map[layer][rank] when
  // expert_map_per_layer, else expert_map[0][rank] for every layer; empty = even split.
  std::vector<std::vector<std::vector<int>>> expert_map;
  bool expert_map_per_layer = false;
  // Separation only (parallel/balance.hpp): the attention/FFN busy-time imbalance above which
  // the decode micro-batches are re-split (0 = off), checked every balance_interval decode
  // steps; the machine file the suggested rank split is modelled for ("" = no suggestion).
  double balance_threshold = 0.0;
  int balance_interval = 10;
  std::string balance_machine;
};

// A failover drill: attention rank `fail_rank` stops serving before decode step `fail_step`
// (-1: no drill). No process is killed (docs/reliability.md).
struct FaultConfig {
  int fail_rank = -1;
  int fail_step = -1;
  bool drill() const { return fail_rank >= 0; }
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
  FaultConfig faults;
  std::string deck_path;
  std::string deck_text;  // the deck as read, overrides applied as a trailer
};

const char* to_string(FfnKind v);
const char* to_string(Activation v);
const char* to_string(NormKind v);
const char* to_string(Precision v);
const char* to_string(CommBackend v);
const char* to_string(CommCompression v);
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
