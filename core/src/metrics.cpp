#include "moeproxy/core/metrics.hpp"

#include <numeric>

namespace moeproxy {

// The names are part of the HDF5 schema (/timing/phases, /memory/kinds): they spell the
// enumerators exactly, so renaming an enumerator changes the file format.
const char* phase_name(Phase p) {
  switch (p) {
    case Phase::norm: return "norm";
    case Phase::attn_qkv: return "attn_qkv";
    case Phase::attn_core: return "attn_core";
    case Phase::attn_out: return "attn_out";
    case Phase::router: return "router";
    case Phase::permute: return "permute";
    case Phase::expert: return "expert";
    case Phase::combine: return "combine";
    case Phase::ffn: return "ffn";
    case Phase::allreduce: return "allreduce";
    case Phase::dispatch: return "dispatch";
    case Phase::send: return "send";
    case Phase::recv: return "recv";
    case Phase::wait: return "wait";
    case Phase::count: break;
  }
  return "invalid";
}

const char* memory_kind_name(MemoryKind k) {
  switch (k) {
    case MemoryKind::weights: return "weights";
    case MemoryKind::kv_cache: return "kv_cache";
    case MemoryKind::activations: return "activations";
    case MemoryKind::workspace: return "workspace";
    case MemoryKind::comm_buffers: return "comm_buffers";
    case MemoryKind::high_water: return "high_water";
    case MemoryKind::count: break;
  }
  return "invalid";
}

double PhaseTable::total() const { return std::accumulate(seconds_.begin(), seconds_.end(), 0.0); }

}  // namespace moeproxy
