#include "moeproxy/io/report.hpp"

#include "moeproxy/io/results.hpp"

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

// One line per check and the suggested split; the greppable BALANCE line follows the others.
void balance_lines(std::ostream& out, const BalanceLog& log) {
  out << "  balance   threshold " << log.threshold << " every " << log.interval
      << " decode steps (busy seconds per step; imbalance = (busier - idler) / busier)\n";
  for (const BalanceCheck& c : log.checks) {
    out << "    step " << std::setw(5) << c.step << ": micro_batches " << c.micro_batches << std::scientific
        << std::setprecision(3) << ", attention " << c.attention_busy << ", ffn " << c.ffn_busy << ", step "
        << c.step_seconds << std::defaultfloat << std::setprecision(3) << ", imbalance " << c.imbalance << " -> "
        << c.action;
    if (c.next_micro_batches != c.micro_batches) out << " (micro_batches " << c.next_micro_batches << ")";
    out << "\n";
  }
  for (const BalanceTrial& t : log.trials) {
    out << "    trial at step " << t.step << ": micro_batches " << t.from_micro_batches << " -> " << t.to_micro_batches;
    if (t.verdict == "unjudged")
      out << ", imbalance " << t.imbalance_before << ", step " << std::scientific << t.step_seconds_before
          << " s" << std::defaultfloat << ": unjudged (the run ended first)\n";
    else
      out << ", imbalance " << t.imbalance_before << " -> " << t.imbalance_after << ", step " << std::scientific
          << t.step_seconds_before << " -> " << t.step_seconds_after << " s" << std::defaultfloat << ": " << t.verdict
          << "\n";
  }
  const RankSplitSuggestion& s = log.suggestion;
  if (s.attn_ranks > 0)
    out << "    suggested split (performance model, " << s.machine << "): attn_ranks = " << s.attn_ranks
        << ", predicted TPOT " << std::scientific << s.tpot_s << " s against " << s.current_tpot_s
        << " s for attn_ranks = " << s.current_attn_ranks << std::defaultfloat << "\n";
  else
    out << "    suggested split: none (" << s.note << ")\n";
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
  out << "\n";
  if (in.balance) balance_lines(out, *in.balance);
  out << "  results   " << in.output_file << "\n\n";

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
  if (s.failover.ran) {
    const FailoverSummary& f = s.failover;
    out << "FAILOVER fail_rank=" << f.fail_rank << " fail_step=" << f.fail_step << " takeover_rank=" << f.takeover_rank
        << " sequences=" << f.sequences << " recovery_s=" << f.recovery_s
        << " decode_tokens_per_s_before=" << f.tokens_per_s_before
        << " decode_tokens_per_s_after=" << f.tokens_per_s_after << " (" << failover_drill_kind << ")\n";
  }
  if (in.balance) {
    const BalanceLog& b = *in.balance;
    const int last = b.checks.empty() ? cfg.parallel.micro_batches : b.checks.back().next_micro_batches;
    out << "BALANCE checks=" << b.checks.size() << " trials=" << b.trials.size() << " micro_batches=" << last
        << " suggested_attn_ranks=" << b.suggestion.attn_ranks << "\n";
  }
  out << "VERIFICATION " << s.verification << " max_rel_error=" << s.max_rel_error
      << " tolerance=" << s.tolerance;
  if (!s.verification_note.empty()) out << " (" << s.verification_note << ")";
  out << "\n";
  if (s.comm_compression != "none")
    out << "COMPRESSION " << s.comm_compression << " bytes_saved=" << s.comm_bytes_saved
        << " max_rel_error=" << s.max_rel_error << " tolerance=" << s.tolerance
        << " compression_tolerance=" << s.compression_tolerance << "\n";
  out << s.verification << "\n";
}

}  // namespace moeproxy::io
