#include "moeproxy/io/deck.hpp"

#include <toml++/toml.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <map>
#include <sstream>
#include <string_view>
#include <tuple>
#include <utility>

namespace moeproxy::io {
namespace {

// Caps on sizes: far above anything a proxy run needs, low enough that products such as
// heads * head_dim stay inside an int in the modules that form them.
constexpr std::int64_t kMaxLayers = 100000;
constexpr std::int64_t kMaxHidden = 1 << 20;
constexpr std::int64_t kMaxHeads = 1 << 14;
constexpr std::int64_t kMaxHeadDim = 1 << 16;
constexpr std::int64_t kMaxFfnHidden = 1 << 24;
constexpr std::int64_t kMaxExperts = 1 << 16;
constexpr std::int64_t kMaxBatch = 1 << 20;
constexpr std::int64_t kMaxTokens = 1 << 24;
constexpr std::int64_t kMaxWarmup = 1000;
constexpr std::int64_t kMaxDegree = 1 << 20;

const char* const kSections[] = {"model", "workload", "parallel", "output", "verify", "faults"};

std::string section_list() {
  std::string out;
  for (const char* s : kSections) out += (out.empty() ? "[" : ", [") + std::string(s) + "]";
  return out;
}

// One value as it reached the reader: from the deck text or from a --set override.
struct Field {
  std::string key;  // "model.layers"
  const toml::node* node = nullptr;
  std::string where;  // "at decks/x.toml:3:1" or "from --set model.layers=4"
  // (0 for the deck or 1 + override index, line, column): values are read, and so
  // reported, in the order the user wrote them.
  std::tuple<std::size_t, std::uint32_t, std::uint32_t> order;
};

std::string quote(std::string_view s) {
  std::string out = "\"";
  for (const char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\t': out += "\\t"; break;
      case '\r': out += "\\r"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", static_cast<unsigned>(c));
          out += buf;
        } else {
          out += c;
        }
    }
  }
  return out + "\"";
}

// toml++ prints strings in single quotes; messages and help use the deck's usual double quotes.
std::string render(const toml::node& n) {
  if (const auto* s = n.as_string()) return quote(s->get());
  if (n.is_table()) return "{...}";
  std::ostringstream os;
  n.visit([&os](const auto& v) { os << v; });
  return os.str();
}

std::string type_phrase(const toml::node& n) {
  switch (n.type()) {
    case toml::node_type::string: return "a string";
    case toml::node_type::integer: return "an integer";
    case toml::node_type::floating_point: return "a floating-point number";
    case toml::node_type::boolean: return "a boolean";
    case toml::node_type::array: return "an array";
    case toml::node_type::table: return "a table";
    case toml::node_type::date: return "a date";
    case toml::node_type::time: return "a time";
    case toml::node_type::date_time: return "a date-time";
    case toml::node_type::none: break;
  }
  return "nothing";
}

std::string format_double(double v) {
  char buf[32];
  const auto res = std::to_chars(buf, buf + sizeof buf, v);
  std::string s(buf, res.ptr);
  // Keep floats recognisable as TOML floats in help and messages: 10000 -> 10000.0.
  if (s.find_first_of(".eEn") == std::string::npos) s += ".0";
  return s;
}

std::string location(const std::string& source, const toml::source_region& r) {
  return source + ":" + std::to_string(r.begin.line) + ":" + std::to_string(r.begin.column);
}

[[noreturn]] void fail(const Field& f, const std::string& problem) {
  throw InputError(f.key + " = " + render(*f.node) + " " + f.where + ": " + problem);
}

std::int64_t get_int(const Field& f) {
  if (const auto* v = f.node->as_integer()) return v->get();
  fail(f, "expected an integer, got " + type_phrase(*f.node));
}

double get_number(const Field& f) {
  double v = 0.0;
  if (const auto* i = f.node->as_integer()) {
    v = static_cast<double>(i->get());
  } else if (const auto* d = f.node->as_floating_point()) {
    v = d->get();
  } else {
    fail(f, "expected a number, got " + type_phrase(*f.node));
  }
  if (!std::isfinite(v)) fail(f, "expected a finite number");
  return v;
}

bool get_bool(const Field& f) {
  if (const auto* v = f.node->as_boolean()) return v->get();
  fail(f, "expected a boolean (true or false), got " + type_phrase(*f.node));
}

const std::string& get_string(const Field& f) {
  if (const auto* v = f.node->as_string()) return v->get();
  fail(f, "expected a string, got " + type_phrase(*f.node));
}

enum class Type { integer, number, boolean, string, array };

const char* type_name(Type t) {
  switch (t) {
    case Type::integer: return "int";
    case Type::number: return "float";
    case Type::boolean: return "bool";
    case Type::string: return "string";
    case Type::array: return "array";
  }
  return "?";
}

// One deck key: how to read it into a RunConfig and how to show its value. The table of
// these is the single list of keys: parsing, suggestions and --help all come from it.
struct KeySpec {
  std::string key;  // "model.layers"
  Type type;
  std::string valid;  // what values are accepted, for --help
  std::function<void(const Field&, RunConfig&)> read;
  std::function<std::string(const RunConfig&)> show;
};

// `ref` is a generic lambda giving the member for both RunConfig& and const RunConfig&.
#define MOEPROXY_FIELD(member) [](auto& c) -> auto& { return c.member; }

template <class Ref>
KeySpec int_key(const char* key, std::int64_t lo, std::int64_t hi, Ref ref,
                std::string valid = {}) {
  const std::string range = std::to_string(lo) + ".." + std::to_string(hi);
  return {key, Type::integer, valid.empty() ? range : valid,
          [=](const Field& f, RunConfig& c) {
            const std::int64_t v = get_int(f);
            if (v < lo || v > hi) fail(f, "must be between " + std::to_string(lo) + " and " +
                                              std::to_string(hi));
            ref(c) = static_cast<int>(v);
          },
          [=](const RunConfig& c) { return std::to_string(ref(c)); }};
}

// A fraction in [0, 1).
template <class Ref>
KeySpec fraction_key(const char* key, const std::string& note, Ref ref) {
  return {key, Type::number, ">= 0.0 and < 1.0; " + note,
          [=](const Field& f, RunConfig& c) {
            const double v = get_number(f);
            if (v < 0.0 || v >= 1.0) fail(f, "must be a fraction >= 0.0 and < 1.0, e.g. 0.05 for 5%");
            ref(c) = v;
          },
          [=](const RunConfig& c) { return format_double(ref(c)); }};
}

// lo is the smallest valid value when inclusive, else an exclusive lower bound.
template <class Ref>
KeySpec float_key(const char* key, double lo, bool inclusive, Ref ref) {
  const std::string bound = (inclusive ? ">= " : "> ") + format_double(lo);
  return {key, Type::number, bound + " (an integer is fine)",
          [=](const Field& f, RunConfig& c) {
            const double v = get_number(f);
            if (inclusive ? v < lo : v <= lo) fail(f, "must be " + bound);
            ref(c) = v;
          },
          [=](const RunConfig& c) { return format_double(ref(c)); }};
}

template <class Ref>
KeySpec bool_key(const char* key, Ref ref) {
  return {key, Type::boolean, "true | false",
          [=](const Field& f, RunConfig& c) { ref(c) = get_bool(f); },
          [=](const RunConfig& c) { return std::string(ref(c) ? "true" : "false"); }};
}

template <class Ref>
KeySpec string_key(const char* key, std::string valid, Ref ref) {
  return {key, Type::string, std::move(valid),
          [=](const Field& f, RunConfig& c) { ref(c) = get_string(f); },
          [=](const RunConfig& c) { return quote(ref(c)); }};
}

// The accepted spellings are config.cpp's to_string names, so the two cannot drift apart.
template <class E, class Ref>
KeySpec choice_key(const char* key, std::vector<E> values, Ref ref) {
  std::string names;
  for (const E v : values) names += (names.empty() ? "" : " | ") + quote(to_string(v));
  return {key, Type::string, names,
          [=](const Field& f, RunConfig& c) {
            if (!f.node->is_string()) {
              fail(f, "expected a string, one of " + names + ", got " + type_phrase(*f.node));
            }
            const std::string& s = get_string(f);
            for (const E v : values) {
              if (s == to_string(v)) {
                ref(c) = v;
                return;
              }
            }
            fail(f, "expected one of " + names);
          },
          [=](const RunConfig& c) { return quote(to_string(ref(c))); }};
}

KeySpec seed_key() {
  const std::string range = "0.." + std::to_string(INT64_MAX);
  return {"model.seed", Type::integer, range,
          [](const Field& f, RunConfig& c) {
            const std::int64_t v = get_int(f);
            if (v < 0) fail(f, "must be >= 0");
            c.model.seed = static_cast<std::uint64_t>(v);
          },
          [](const RunConfig& c) { return std::to_string(c.model.seed); }};
}

KeySpec routing_key() {
  const std::string valid = R"("learned" | "uniform" | "zipf:<exponent>" (exponent > 0))";
  return {"workload.routing", Type::string, valid,
          [=](const Field& f, RunConfig& c) {
            const std::string& s = get_string(f);
            WorkloadConfig& w = c.workload;
            if (s == "learned") {
              w.routing = RoutingMode::learned;
            } else if (s == "uniform") {
              w.routing = RoutingMode::uniform;
            } else if (s.rfind("zipf:", 0) == 0) {
              const char* first = s.data() + 5;
              const char* last = s.data() + s.size();
              double e = 0.0;
              const auto res = std::from_chars(first, last, e);
              if (res.ec != std::errc() || res.ptr != last || !std::isfinite(e) || e <= 0.0) {
                fail(f, "the Zipf exponent must be a number > 0, e.g. \"zipf:1.2\"");
              }
              w.routing = RoutingMode::zipf;
              w.zipf_exponent = e;
            } else {
              fail(f, "expected one of " + valid);
            }
          },
          [](const RunConfig& c) {
            return quote(to_string(c.workload.routing, c.workload.zipf_exponent));
          }};
}

std::string show_list(const std::vector<int>& v) {
  std::string out;
  for (const int x : v) out += (out.empty() ? "" : ", ") + std::to_string(x);
  return "[" + out + "]";
}

// An array of integers at `node` (the whole value or one of its nested lists), each in [lo, hi].
std::vector<int> get_int_list(const Field& f, const toml::node& node, std::int64_t lo, std::int64_t hi,
                              const std::string& expected) {
  const toml::array* a = node.as_array();
  if (!a) fail(f, "expected " + expected + ", found " + type_phrase(node) + " " + render(node));
  std::vector<int> out;
  for (const toml::node& item : *a) {
    const auto* v = item.as_integer();
    if (!v) fail(f, "expected " + expected + ", found " + type_phrase(item) + " " + render(item));
    if (v->get() < lo || v->get() > hi)
      fail(f, "entry " + render(item) + " must be between " + std::to_string(lo) + " and " + std::to_string(hi));
    out.push_back(static_cast<int>(v->get()));
  }
  return out;
}

KeySpec head_distribution_key() {
  const std::string valid = "[heads of tp rank 0, ...]: tp entries >= 1 adding up to model.heads; [] = even split";
  return {"parallel.head_distribution", Type::array, valid,
          [](const Field& f, RunConfig& c) {
            c.parallel.head_distribution = get_int_list(f, *f.node, 1, kMaxHeads, "an array of head counts, e.g. [3, 3, 2]");
          },
          [](const RunConfig& c) { return show_list(c.parallel.head_distribution); }};
}

// One list of experts per rank of the expert group, for every layer ([[0, 1], [2, 3]]), or
// one such list of lists per layer ([[[0], [1]], [[1], [0]]]): the nesting says which.
KeySpec expert_map_key() {
  const std::string valid =
      "[[experts of rank 0], ...] for every layer, or [[[layer 0, rank 0], ...], ...] per layer; "
      "[] = even split";
  return {"parallel.expert_map", Type::array, valid,
          [](const Field& f, RunConfig& c) {
            const std::string expected = "an array with one array of expert ids per rank of the expert group "
                                         "(e.g. [[0, 1], [2, 3]]), or an array of those, one per layer";
            const toml::array* top = f.node->as_array();
            if (!top) fail(f, "expected " + expected + ", got " + type_phrase(*f.node));
            bool per_layer = false;
            for (const toml::node& rank : *top)
              if (const toml::array* inner = rank.as_array(); inner && !inner->empty())
                per_layer = per_layer || inner->front().is_array();
            std::vector<std::vector<std::vector<int>>> map;
            auto rank_lists = [&](const toml::node& node) {
              const toml::array* ranks = node.as_array();
              if (!ranks) fail(f, "expected " + expected + ", found " + type_phrase(node) + " " + render(node));
              std::vector<std::vector<int>> lists;
              for (const toml::node& rank : *ranks) lists.push_back(get_int_list(f, rank, 0, kMaxExperts - 1, expected));
              return lists;
            };
            if (per_layer)
              for (const toml::node& layer : *top) map.push_back(rank_lists(layer));
            else if (!top->empty())
              map.push_back(rank_lists(*top));
            c.parallel.expert_map = std::move(map);
            c.parallel.expert_map_per_layer = per_layer;
          },
          [](const RunConfig& c) {
            auto ranks = [](const std::vector<std::vector<int>>& lists) {
              std::string out;
              for (const std::vector<int>& l : lists) out += (out.empty() ? "" : ", ") + show_list(l);
              return "[" + out + "]";
            };
            const auto& map = c.parallel.expert_map;
            if (map.empty()) return std::string("[]");
            if (!c.parallel.expert_map_per_layer) return ranks(map.front());
            std::string out;
            for (const auto& layer : map) out += (out.empty() ? "" : ", ") + ranks(layer);
            return "[" + out + "]";
          }};
}

const std::vector<KeySpec>& key_specs() {
  static const std::vector<KeySpec> specs = [] {
    std::vector<KeySpec> s;
    s.push_back(int_key("model.layers", 1, kMaxLayers, MOEPROXY_FIELD(model.layers)));
    s.push_back(int_key("model.hidden", 1, kMaxHidden, MOEPROXY_FIELD(model.hidden)));
    s.push_back(int_key("model.heads", 1, kMaxHeads, MOEPROXY_FIELD(model.heads)));
    s.push_back(int_key("model.head_dim", 0, kMaxHeadDim, MOEPROXY_FIELD(model.head_dim),
                        "0.." + std::to_string(kMaxHeadDim) + "; 0 = hidden / heads"));
    s.push_back(int_key("model.kv_heads", 0, kMaxHeads, MOEPROXY_FIELD(model.kv_heads),
                        "0 = heads, or a divisor of heads"));
    s.push_back(choice_key("model.ffn", std::vector<FfnKind>{FfnKind::dense, FfnKind::moe},
                           MOEPROXY_FIELD(model.ffn)));
    s.push_back(int_key("model.ffn_hidden", 1, kMaxFfnHidden, MOEPROXY_FIELD(model.ffn_hidden)));
    s.push_back(int_key("model.experts", 0, kMaxExperts, MOEPROXY_FIELD(model.experts),
                        "1.." + std::to_string(kMaxExperts) + " (ignored when dense)"));
    s.push_back(int_key("model.top_k", 0, kMaxExperts, MOEPROXY_FIELD(model.top_k),
                        "1..experts (ignored when dense)"));
    s.push_back(bool_key("model.renormalize", MOEPROXY_FIELD(model.renormalize)));
    s.push_back(choice_key("model.activation",
                           std::vector<Activation>{Activation::gelu, Activation::swiglu},
                           MOEPROXY_FIELD(model.activation)));
    s.push_back(choice_key("model.norm",
                           std::vector<NormKind>{NormKind::layernorm, NormKind::rmsnorm},
                           MOEPROXY_FIELD(model.norm)));
    s.push_back(bool_key("model.rope", MOEPROXY_FIELD(model.rope)));
    s.push_back(float_key("model.rope_theta", 0.0, false, MOEPROXY_FIELD(model.rope_theta)));
    s.push_back(float_key("model.norm_eps", 0.0, false, MOEPROXY_FIELD(model.norm_eps)));
    s.push_back(float_key("model.capacity_factor", 0.0, true,
                          MOEPROXY_FIELD(model.capacity_factor)));
    s.push_back(choice_key("model.precision",
                           std::vector<Precision>{Precision::fp32, Precision::fp16},
                           MOEPROXY_FIELD(model.precision)));
    s.push_back(seed_key());
    s.push_back(string_key("model.checkpoint", "HDF5 path; \"\" = generated weights",
                           MOEPROXY_FIELD(model.checkpoint)));

    s.push_back(int_key("workload.batch", 1, kMaxBatch, MOEPROXY_FIELD(workload.batch)));
    s.push_back(int_key("workload.prompt", 1, kMaxTokens, MOEPROXY_FIELD(workload.prompt)));
    s.push_back(
        int_key("workload.decode_steps", 0, kMaxTokens, MOEPROXY_FIELD(workload.decode_steps)));
    s.push_back(int_key("workload.warmup", 0, kMaxWarmup, MOEPROXY_FIELD(workload.warmup)));
    s.push_back(routing_key());

    s.push_back(int_key("parallel.dp", 1, kMaxDegree, MOEPROXY_FIELD(parallel.dp)));
    s.push_back(int_key("parallel.tp", 1, kMaxDegree, MOEPROXY_FIELD(parallel.tp)));
    s.push_back(int_key("parallel.pp", 1, kMaxDegree, MOEPROXY_FIELD(parallel.pp)));
    s.push_back(int_key("parallel.ep", 1, kMaxDegree, MOEPROXY_FIELD(parallel.ep)));
    s.push_back(int_key("parallel.attn_ranks", 0, kMaxDegree, MOEPROXY_FIELD(parallel.attn_ranks),
                        "0.." + std::to_string(kMaxDegree) + "; 0 = no separation"));
    s.push_back(
        int_key("parallel.head_groups", 1, kMaxDegree, MOEPROXY_FIELD(parallel.head_groups)));
    s.push_back(int_key("parallel.dim_groups", 1, kMaxDegree, MOEPROXY_FIELD(parallel.dim_groups)));
    s.push_back(
        int_key("parallel.micro_batches", 1, kMaxDegree, MOEPROXY_FIELD(parallel.micro_batches)));
    s.push_back(int_key("parallel.attn_replicas", 1, kMaxDegree, MOEPROXY_FIELD(parallel.attn_replicas),
                        "1.." + std::to_string(kMaxDegree) + "; divides parallel.dp"));
    s.push_back(int_key("parallel.ep_chunks", 1, kMaxDegree, MOEPROXY_FIELD(parallel.ep_chunks),
                        "1.." + std::to_string(kMaxDegree) + "; 1 = blocking dispatch and combine"));
    s.push_back(choice_key(
        "parallel.comm",
        std::vector<CommBackend>{CommBackend::automatic, CommBackend::nccl, CommBackend::mpi},
        MOEPROXY_FIELD(parallel.comm)));
    s.push_back(choice_key("parallel.comm_compression",
                           std::vector<CommCompression>{CommCompression::none, CommCompression::int8},
                           MOEPROXY_FIELD(parallel.comm_compression)));
    s.push_back(head_distribution_key());
    s.push_back(expert_map_key());
    s.push_back(fraction_key("parallel.balance_threshold", "0 = off; separation only",
                             MOEPROXY_FIELD(parallel.balance_threshold)));
    s.push_back(int_key("parallel.balance_interval", 1, kMaxTokens,
                        MOEPROXY_FIELD(parallel.balance_interval),
                        "1.." + std::to_string(kMaxTokens) + " decode steps; separation only"));
    s.push_back(string_key("parallel.balance_machine",
                           "machine file for the suggested rank split; \"\" = none",
                           MOEPROXY_FIELD(parallel.balance_machine)));

    s.push_back(string_key("output.file", "HDF5 path without ':'", MOEPROXY_FIELD(output.file)));
    s.push_back(bool_key("output.dump_hidden", MOEPROXY_FIELD(output.dump_hidden)));

    s.push_back(choice_key("verify.mode",
                           std::vector<VerifyMode>{VerifyMode::automatic, VerifyMode::reference,
                                                   VerifyMode::file, VerifyMode::none},
                           MOEPROXY_FIELD(verify.mode)));
    s.push_back(int_key("verify.sample", 0, kMaxBatch, MOEPROXY_FIELD(verify.sample)));
    s.push_back(string_key("verify.file", "HDF5 path; needed when mode = \"file\"",
                           MOEPROXY_FIELD(verify.file)));

    s.push_back(int_key("faults.fail_rank", -1, kMaxDegree, MOEPROXY_FIELD(faults.fail_rank),
                        "-1 (no drill) or an attention rank with a replica"));
    s.push_back(int_key("faults.fail_step", -1, kMaxTokens, MOEPROXY_FIELD(faults.fail_step),
                        "-1 (no drill) or 0..decode_steps-1"));
    return s;
  }();
  return specs;
}

#undef MOEPROXY_FIELD

const KeySpec* find_spec(const std::string& key) {
  for (const KeySpec& s : key_specs()) {
    if (s.key == key) return &s;
  }
  return nullptr;
}

std::string lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

std::size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<std::size_t> row(b.size() + 1);
  for (std::size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i) {
    std::size_t diag = row[0];
    row[0] = i;
    for (std::size_t j = 1; j <= b.size(); ++j) {
      const std::size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diag = up;
    }
  }
  return row[b.size()];
}

// Close enough to be a typo rather than a different word.
bool is_close(std::size_t distance, const std::string& typed, const std::string& known) {
  return distance * 3 <= std::max(typed.size(), known.size()) + 1;
}

// "; did you mean model.hidden?" for the nearest known key, else the keys that [section]
// accepts. A right key name in the wrong (or misspelt) section costs one edit.
std::string key_hint(const std::string& section, const std::string& name) {
  const std::string typed = lower(name);
  const KeySpec* best = nullptr;
  std::size_t best_cost = SIZE_MAX;
  for (const KeySpec& s : key_specs()) {
    const std::size_t dot = s.key.find('.');
    const std::string spec_name = s.key.substr(dot + 1);
    const std::size_t cost =
        edit_distance(typed, spec_name) + (s.key.compare(0, dot, section) == 0 ? 0 : 1);
    if (cost < best_cost && is_close(cost, typed, spec_name)) {
      best = &s;
      best_cost = cost;
    }
  }
  if (best) return "; did you mean " + best->key + "?";
  std::string keys;
  for (const KeySpec& s : key_specs()) {
    if (s.key.compare(0, s.key.find('.'), section) == 0) {
      keys += (keys.empty() ? "" : ", ") + s.key.substr(section.size() + 1);
    }
  }
  if (!keys.empty()) return "; valid keys in [" + section + "]: " + keys;
  return "; keys belong in the sections " + section_list();
}

std::string section_hint(const std::string& section) {
  const std::string typed = lower(section);
  const char* best = nullptr;
  std::size_t best_cost = SIZE_MAX;
  for (const char* s : kSections) {
    const std::size_t cost = edit_distance(typed, s);
    if (cost < best_cost && is_close(cost, typed, s)) {
      best = s;
      best_cost = cost;
    }
  }
  if (best) return "; did you mean [" + std::string(best) + "]?";
  return "; valid sections: " + section_list();
}

bool is_section(const std::string& name) {
  return std::find_if(std::begin(kSections), std::end(kSections),
                      [&](const char* s) { return name == s; }) != std::end(kSections);
}

// Known keys of the deck text, each with where it was written. Unknown sections and keys
// are reported in file order, so the first mistake in the file is the one named.
void collect_deck(const toml::table& root, const std::string& source,
                  std::map<std::string, Field>& fields) {
  struct Item {
    std::string section;
    std::string name;  // empty for a problem with the section itself
    const toml::node* node;
    toml::source_region region;
  };
  // A [header]'s table starts at its '[', a friendlier place to point at than its name.
  const auto region = [](const toml::key& k, const toml::node& v) {
    return v.is_table() ? v.source() : k.source();
  };
  std::vector<Item> items;
  for (auto&& [k, node] : root) {
    const std::string section(k.str());
    if (is_section(section) && node.is_table()) {
      for (auto&& [k2, v] : *node.as_table()) {
        items.push_back({section, std::string(k2.str()), &v, region(k2, v)});
      }
    } else {
      items.push_back({section, "", &node, region(k, node)});
    }
  }
  std::sort(items.begin(), items.end(), [](const Item& a, const Item& b) {
    return std::tie(a.region.begin.line, a.region.begin.column) <
           std::tie(b.region.begin.line, b.region.begin.column);
  });

  for (const Item& it : items) {
    const std::string where = location(source, it.region);
    if (it.name.empty()) {
      if (is_section(it.section)) {
        throw InputError(it.section + " = " + render(*it.node) + " at " + where +
                         ": expected a [" + it.section + "] table, got " +
                         type_phrase(*it.node));
      }
      if (it.node->is_table()) {
        throw InputError("unknown section [" + it.section + "] at " + where +
                         section_hint(it.section));
      }
      throw InputError("key " + it.section + " at " + where + " is outside any section" +
                       key_hint("", it.section));
    }
    const std::string key = it.section + "." + it.name;
    if (!find_spec(key)) {
      throw InputError("unknown key " + key + " at " + where + key_hint(it.section, it.name));
    }
    fields[key] = Field{key, it.node, "at " + where,
                        {0, it.region.begin.line, it.region.begin.column}};
  }
}

std::string trim(const std::string& s) {
  const auto first = s.find_first_not_of(" \t");
  if (first == std::string::npos) return {};
  return s.substr(first, s.find_last_not_of(" \t") - first + 1);
}

// Each override's value lives in its own one-key table ("v"), kept alive in `storage`.
void collect_overrides(const std::vector<std::string>& overrides, std::vector<toml::table>& storage,
                       std::map<std::string, Field>& fields) {
  storage.reserve(overrides.size());
  for (std::size_t i = 0; i < overrides.size(); ++i) {
    const std::string& o = overrides[i];
    const std::string bad = "bad override --set " + quote(o) + ": ";
    const std::string example = " (e.g. --set parallel.tp=4)";
    if (o.find_first_of("\r\n") != std::string::npos) {
      throw InputError(bad + "line breaks are not allowed" + example);
    }
    const auto eq = o.find('=');
    if (eq == std::string::npos) throw InputError(bad + "expected section.key=value" + example);
    const std::string key = trim(o.substr(0, eq));
    const std::string raw = trim(o.substr(eq + 1));
    const auto dot = key.find('.');
    if (dot == std::string::npos || dot == 0 || dot + 1 == key.size() ||
        key.find('.', dot + 1) != std::string::npos) {
      throw InputError(bad + "expected section.key=value, got the key " + quote(key) + example);
    }
    const KeySpec* spec = find_spec(key);
    if (!spec) {
      throw InputError("unknown key " + key + " in --set " + o +
                       key_hint(key.substr(0, dot), key.substr(dot + 1)));
    }

    // The value is TOML when it reads as one; otherwise, and for string keys whenever it is
    // not a TOML string, it is the literal text: --set output.file=runs/a.h5 just works.
    toml::table value;
    try {
      value = toml::parse(std::string_view("v = " + raw));
    } catch (const toml::parse_error&) {
      // Not TOML: taken as literal text below.
    }
    const toml::node* v = value.get("v");
    if (!v || (spec->type == Type::string && !v->is_string())) {
      value = toml::table{};
      value.insert_or_assign("v", raw);
    }
    storage.push_back(std::move(value));
    fields[key] = Field{key, storage.back().get("v"), "from --set " + o, {i + 1, 0, 0}};
  }
}

// "model.heads = 32 at decks/x.toml:4:1", or "... (default)" for a key the user left out.
std::string describe(const std::string& key, const RunConfig& c,
                     const std::map<std::string, Field>& fields) {
  const auto it = fields.find(key);
  return key + " = " + find_spec(key)->show(c) + " " +
         (it == fields.end() ? "(default)" : it->second.where);
}

// Combinations that make no sense for any number of ranks.
void check_combinations(const RunConfig& c, const std::map<std::string, Field>& fields) {
  const auto d = [&](const char* key) { return describe(key, c, fields); };
  const ModelConfig& m = c.model;
  if (m.head_dim == 0 && m.hidden % m.heads != 0) {
    throw InputError(d("model.hidden") + " is not divisible by " + d("model.heads") +
                     " (with model.head_dim = 0 the head size is hidden / heads): choose heads "
                     "that divide hidden, or set model.head_dim");
  }
  if (m.kv_heads > 0 && m.heads % m.kv_heads != 0) {
    throw InputError(d("model.kv_heads") + " does not divide " + d("model.heads") +
                     ": use a divisor of heads, or 0 for kv_heads = heads");
  }
  if (m.rope && m.effective_head_dim() % 2 != 0) {
    const std::string size =
        m.head_dim > 0 ? d("model.head_dim")
                       : "the head size hidden / heads = " +
                             std::to_string(m.effective_head_dim()) + " (" + d("model.hidden") +
                             ", " + d("model.heads") + ")";
    throw InputError(size + " is odd, but " + d("model.rope") +
                     " needs an even head size: set an even model.head_dim, or model.rope = false");
  }
  if (m.is_moe()) {
    if (m.experts < 1) {
      throw InputError(d("model.experts") + ": must be >= 1 when " + d("model.ffn"));
    }
    if (m.top_k < 1 || m.top_k > m.experts) {
      throw InputError(d("model.top_k") + ": must be between 1 and " + d("model.experts"));
    }
  }
  const WorkloadConfig& w = c.workload;
  const std::int64_t tokens =
      std::int64_t{w.batch} * (std::int64_t{w.prompt} + std::int64_t{w.decode_steps});
  if (tokens > INT_MAX) {
    throw InputError(d("workload.batch") + ", " + d("workload.prompt") + " and " +
                     d("workload.decode_steps") + " make batch * (prompt + decode_steps) = " +
                     std::to_string(tokens) + " tokens; at most " + std::to_string(INT_MAX) +
                     " are supported");
  }
  if ((c.faults.fail_rank >= 0) != (c.faults.fail_step >= 0)) {
    throw InputError(d("faults.fail_rank") + " and " + d("faults.fail_step") +
                     ": a failover drill needs both (the attention rank that fails and the decode step "
                     "at which it fails); set both, or neither");
  }
  if (c.faults.fail_step >= c.workload.decode_steps) {
    throw InputError(d("faults.fail_step") + " is not a decode step of " + d("workload.decode_steps") +
                     ": choose 0.." + std::to_string(c.workload.decode_steps - 1) +
                     " (the rank fails before that step)");
  }
  if (c.parallel.balance_threshold > 0.0 && c.faults.fail_rank >= 0) {
    throw InputError(d("parallel.balance_threshold") + " with a failover drill (" + d("faults.fail_rank") +
                     "): both change the decode micro-batches mid-run; run the drill without balancing");
  }
  if (c.parallel.attn_ranks == 0) {
    for (const char* key : {"parallel.balance_threshold", "parallel.balance_interval",
                            "parallel.balance_machine"}) {
      if (fields.count(key) != 0) {
        throw InputError(d(key) + " balances the two sides of attention/MoE separation, but " +
                         d("parallel.attn_ranks") +
                         " does not separate them: set parallel.attn_ranks > 0 or remove " + key);
      }
    }
  }
  if (c.verify.mode == VerifyMode::file && c.verify.file.empty()) {
    throw InputError(d("verify.mode") +
                     " needs verify.file, the HDF5 output of an earlier serial run of this deck");
  }
}

}  // namespace

RunConfig parse_deck(const std::string& text, const std::string& source_name,
                     const std::vector<std::string>& overrides) {
  const std::string source = source_name.empty() ? "deck" : source_name;
  toml::table root;
  try {
    root = toml::parse(std::string_view(text));
  } catch (const toml::parse_error& e) {
    throw InputError(location(source, e.source()) + ": invalid TOML: " +
                     std::string(e.description()));
  }

  std::map<std::string, Field> fields;
  collect_deck(root, source, fields);
  std::vector<toml::table> override_values;
  collect_overrides(overrides, override_values, fields);

  std::vector<const Field*> ordered;
  for (const auto& kv : fields) ordered.push_back(&kv.second);
  std::sort(ordered.begin(), ordered.end(),
            [](const Field* a, const Field* b) { return a->order < b->order; });

  RunConfig config;
  for (const Field* f : ordered) find_spec(f->key)->read(*f, config);
  check_combinations(config, fields);

  config.deck_path = source_name;
  config.deck_text = text;
  if (!overrides.empty()) {
    if (!text.empty()) config.deck_text += text.back() == '\n' ? "\n" : "\n\n";
    config.deck_text += "# Overrides applied after the deck above:\n";
    for (const std::string& o : overrides) config.deck_text += "# --set " + o + "\n";
  }
  return config;
}

RunConfig load_deck(const std::string& path, const std::vector<std::string>& overrides) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) {
    throw InputError("cannot read deck " + path + ": it is a directory, expected a TOML file");
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    throw InputError("cannot read deck " + path + ": " + std::strerror(errno) +
                     " (expected a readable TOML file)");
  }
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) throw InputError("cannot read deck " + path + ": read error");
  return parse_deck(text, path, overrides);
}

std::string deck_keys_help() {
  const RunConfig defaults;
  std::size_t key_w = 3, default_w = 7;
  for (const KeySpec& s : key_specs()) {
    key_w = std::max(key_w, s.key.size());
    default_w = std::max(default_w, s.show(defaults).size());
  }
  const auto row = [&](const std::string& key, const std::string& type, const std::string& def,
                       const std::string& valid) {
    return "  " + key + std::string(key_w - key.size() + 2, ' ') + type +
           std::string(8 - type.size(), ' ') + def + std::string(default_w - def.size() + 2, ' ') +
           valid + "\n";
  };
  std::string out =
      "Deck keys (TOML; every key is optional; override with --set section.key=value):\n";
  out += row("key", "type", "default", "valid values");
  for (const KeySpec& s : key_specs()) {
    out += row(s.key, type_name(s.type), s.show(defaults), s.valid);
  }
  return out;
}

}  // namespace moeproxy::io
