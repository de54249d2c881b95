#include "moeproxy/io/report.hpp"

#include <cstdio>
#include <iomanip>

namespace moeproxy::io {

namespace {

std::string mib(std::uint64_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f MiB", static_cast<double>(bytes) / (1024.0 * 1024.0));
  return buf;
}

void phase_table(std::ostream& out, const char* title, const PhaseStats& s) {
  out << "  " << title << " seconds per phase, all layers (min / mean / max over ranks)\n";
  for (int p = 0; p < phase_count; ++p) {
    if (s.max[p] <= 0.0) continue;
    out << "    " << std::left << std::setw(10) << phase_name(static_cast<Phase>(p)) << std::right
        << std::scientific << std::setprecision(3) << std::setw(12) << s.min[p] << std::setw(12)
        << s.mean[p] << std::setw(12) << s.max[p] << "\n";
  }
  out << std::defaultfloat;
}

}  // namespace

void print_report(std::ostream& out, const RunConfig& cfg, const RunSummary& s, const ReportInput& in) {
  const ModelConfig& m = cfg.model;
  const WorkloadConfig& w = cfg.workload;
  out << "\n== moeproxy " << in.app_version << " (" << in.git_sha << ") ==\n";
  out << "  deck      " << (cfg.deck_path.empty() ? "(inline)" : cfg.deck_path) << "\n";
  out << "  model     " << m.layers << " layers, hidden " << m.hidden << ", " << m.heads << " heads x "
      << m.effective_head_dim() << " (" << m.effective_kv_heads() << " kv), ";
  if (m.is_moe())
    out << "MoE " << m.experts << " experts top-" << m.top_k << " x " << m.ffn_hidden;
  else
    out << "dense FFN " << m.ffn_hidden;
  out << " " << to_string(m.activation) << ", " << to_string(m.norm) << ", " << to_string(m.precision) << "\n";
  out << "  workload  " << w.batch << " sequences x " << w.prompt << " prompt tokens, " << w.decode_steps
      << " decode steps, routing " << to_string(w.routing, w.zipf_exponent) << "\n";
  out << "  layout    " << in.layout << " on " << in.ranks << " ranks, " << in.backend << ", communication "
      << in.comm_backend << "\n";
  phase_table(out, "prefill", in.prefill);
  phase_table(out, "decode", in.decode);
  out << "  memory (largest rank):";
  for (int k = 0; k < memory_kind_count; ++k)
    if (in.max_memory[k] > 0) out << " " << memory_kind_name(static_cast<MemoryKind>(k)) << " " << mib(in.max_memory[k]) << ";";
  out << "\n  communication: " << s.comm_exposed_seconds << " s exposed, " << s.comm_hidden_seconds
      << " s hidden behind compute (summed over ranks; hidden: asynchronous transfers in flight while computing)";
  out << "\n  results   " << in.output_file << "\n\n";

  out << std::setprecision(6);
  out << "PERFORMANCE prefill_tokens_per_s=" << s.prefill_tokens_per_s << " ttft_s=" << s.ttft_s
      << " tpot_s=" << s.tpot_s << " decode_tokens_per_s=" << s.decode_tokens_per_s << " mfu=";
  if (s.peak_flops > 0.0)
    out << s.mfu;
  else
    out << "n/a(peak unknown)";
  out << "\n";
  out << "FRACTION comm=" << s.comm_fraction << " comm_seconds_raw=" << s.comm_seconds_raw
      << " comm_exposed_s=" << s.comm_exposed_seconds << " comm_hidden_s=" << s.comm_hidden_seconds
      << " expert_imbalance=" << s.expert_imbalance << " dropped_tokens=" << s.dropped_tokens << "\n";
  out << "VERIFICATION " << s.verification << " max_rel_error=" << s.max_rel_error
      << " tolerance=" << s.tolerance;
  if (!s.verification_note.empty()) out << " (" << s.verification_note << ")";
  out << "\n" << s.verification << "\n";
}

}  // namespace moeproxy::io
