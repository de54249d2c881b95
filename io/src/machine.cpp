#include "moeproxy/io/machine.hpp"

#include <toml++/toml.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <functional>
#include <iomanip>
#include <iterator>
#include <set>
#include <sstream>
#include <vector>

namespace moeproxy::io {
namespace {

// One figure of the file: where it lives, its unit's factor to SI, and the field it sets.
struct Key {
  const char* section;
  const char* name;
  double scale;  // file unit -> SI
  bool required;
  std::function<double&(MachineSpec&)> field;
  const char* meaning;
};

constexpr double tera = 1e12, giga = 1e9, micro = 1e-6;

const std::vector<Key>& keys() {
  static const std::vector<Key> table = {
      {"compute", "peak_tflops_fp16", tera, true, [](MachineSpec& m) -> double& { return m.peak_flops_fp16; },
       "dense fp16 peak per device, TFLOP/s"},
      {"compute", "peak_tflops_fp32", tera, true, [](MachineSpec& m) -> double& { return m.peak_flops_fp32; },
       "dense fp32 peak per device, TFLOP/s"},
      {"compute", "gemm_efficiency", 1.0, false, [](MachineSpec& m) -> double& { return m.gemm_efficiency; },
       "fraction of peak large GEMMs reach"},
      {"compute", "attention_efficiency", 1.0, false,
       [](MachineSpec& m) -> double& { return m.attention_efficiency; }, "fraction of peak the attention kernel reaches"},
      {"compute", "kernel_overhead_us", micro, false, [](MachineSpec& m) -> double& { return m.kernel_overhead; },
       "launch and fence overhead per kernel, microseconds"},
      {"memory", "bandwidth_gbs", giga, true, [](MachineSpec& m) -> double& { return m.memory_bandwidth; },
       "device memory bandwidth, GB/s"},
      {"memory", "efficiency", 1.0, false, [](MachineSpec& m) -> double& { return m.memory_efficiency; },
       "fraction of the bandwidth streaming kernels reach"},
      {"memory", "gemm_efficiency", 1.0, false, [](MachineSpec& m) -> double& { return m.gemm_memory_efficiency; },
       "fraction of the streaming rate a bandwidth-bound GEMM (few rows) reaches"},
      {"memory", "capacity_gb", giga, true, [](MachineSpec& m) -> double& { return m.memory_bytes; },
       "device memory, GB"},
      {"intra_node", "bandwidth_gbs", giga, true, [](MachineSpec& m) -> double& { return m.intra.bandwidth; },
       "per device and direction inside a node, GB/s"},
      {"intra_node", "latency_us", micro, true, [](MachineSpec& m) -> double& { return m.intra.latency; },
       "per message inside a node, microseconds"},
      {"intra_node", "efficiency", 1.0, false, [](MachineSpec& m) -> double& { return m.intra.efficiency; },
       "bus bandwidth reached / bandwidth_gbs"},
      {"inter_node", "bandwidth_gbs", giga, true, [](MachineSpec& m) -> double& { return m.inter.bandwidth; },
       "per device and direction across nodes, GB/s"},
      {"inter_node", "latency_us", micro, true, [](MachineSpec& m) -> double& { return m.inter.latency; },
       "per message across nodes, microseconds"},
      {"inter_node", "efficiency", 1.0, false, [](MachineSpec& m) -> double& { return m.inter.efficiency; },
       "bus bandwidth reached / bandwidth_gbs"},
      {"inter_node", "peer_overhead_us", micro, false, [](MachineSpec& m) -> double& { return m.peer_overhead; },
       "cost per peer of an all-to-all, microseconds"},
  };
  return table;
}

std::string where(const std::string& source, const toml::node& n) {
  return source + ":" + std::to_string(n.source().begin.line);
}

std::string valid_keys(const std::string& section) {
  std::string s;
  if (section == "machine") return "name, devices_per_node";
  for (const Key& k : keys())
    if (section == k.section) s += (s.empty() ? "" : ", ") + std::string(k.name);
  return s;
}

bool known_section(const std::string& s) {
  return s == "machine" || s == "compute" || s == "memory" || s == "intra_node" || s == "inter_node" ||
         s == "profile";
}

// [profile]: sync_wait as [microseconds of work, microseconds waited] and, per sweep
// ([[profile.sweep]], its `bytes`), per kernel an array of [size, microseconds] (gemm: [rows,
// n, microseconds] for [rows, n] x [n, n]; the kernels by a parameter: [parameter, size,
// microseconds]), as calibrate measured them. `full` names the key in messages.
std::vector<std::vector<double>> profile_rows(const std::string& source, const std::string& full,
                                              const toml::node& node, std::size_t width, const char* shape) {
  const auto fail = [&](const toml::node& at) {
    return InputError(where(source, at) + ": " + full + " must be an array of " + shape +
                      " arrays of positive numbers");
  };
  const toml::array* rows = node.as_array();
  if (!rows || rows->empty()) throw fail(node);
  std::vector<std::vector<double>> out;
  for (const toml::node& row_node : *rows) {
    const toml::array* row = row_node.as_array();
    if (!row || row->size() != width) throw fail(row_node);
    std::vector<double> values;
    for (const toml::node& v : *row) {
      double x = -1.0;
      if (const auto* i = v.as_integer()) x = static_cast<double>(i->get());
      else if (const auto* d = v.as_floating_point()) x = d->get();
      if (!std::isfinite(x) || x <= 0.0) throw fail(v);
      values.push_back(x);
    }
    out.push_back(values);
  }
  return out;
}

KernelProfile kernel_rows(const std::string& source, const std::string& full, const toml::node& node) {
  KernelProfile p;
  for (const auto& r : profile_rows(source, full, node, 2, "[size, microseconds]")) {
    if (!p.points.empty() && r[0] <= p.points.back().first)
      throw InputError(where(source, node) + ": " + full + ": sizes must increase");
    p.points.emplace_back(r[0], r[1] * micro);
  }
  return p;
}

void parse_kernels(const std::string& source, const std::string& prefix, const toml::table& table,
                   KernelProfiles& profiles) {
  for (const auto& [name_key, node] : table) {
    const std::string name(name_key.str()), full = prefix + name;
    if (name == "bytes") continue;
    if (name == "gemm") {
      for (const auto& r : profile_rows(source, full, node, 3, "[rows, n, microseconds]")) {
        const double elements = r[1] * r[1];
        auto& by = profiles.gemm.by_weight;
        auto it = std::find_if(by.begin(), by.end(), [&](const auto& w) { return w.first >= elements; });
        if (it == by.end() || it->first != elements) it = by.insert(it, {elements, KernelProfile{}});
        auto& points = it->second.points;
        if (!points.empty() && r[0] <= points.back().first)
          throw InputError(where(source, node) + ": " + full + ": rows must increase for each n (n = " +
                           std::to_string(static_cast<long>(r[1])) + ")");
        points.emplace_back(r[0], r[2] * micro);
      }
      continue;
    }
    const auto parameter = profiled_by_parameter().find(name);
    if (parameter != profiled_by_parameter().end()) {
      const std::string shape = "[" + parameter->second + ", size, microseconds]";
      const toml::array* rows = node.as_array();
      const toml::array* first = rows && !rows->empty() ? (*rows)[0].as_array() : nullptr;
      if (first && first->size() == 2)
        throw InputError(where(source, node) + ": " + full + " has [size, microseconds] rows, as calibrate wrote them " +
                         "before it profiled " + name + " by " + parameter->second + ": rows are " + shape +
                         " now; run moeproxy calibrate again");
      auto& by = profiles.by_parameter[name].by_value;
      for (const auto& r : profile_rows(source, full, node, 3, shape.c_str())) {
        auto it = std::find_if(by.begin(), by.end(), [&](const auto& h) { return h.first >= r[0]; });
        if (it == by.end() || it->first != r[0]) it = by.insert(it, {r[0], KernelProfile{}});
        auto& points = it->second.points;
        if (!points.empty() && r[1] <= points.back().first)
          throw InputError(where(source, node) + ": " + full + ": sizes must increase for each " + parameter->second +
                           " (" + std::to_string(static_cast<long>(r[0])) + ")");
        points.emplace_back(r[1], r[2] * micro);
      }
      continue;
    }
    if (name == "route")
      throw InputError(where(source, node) + ": " + full + " is the top-k alone, as calibrate profiled it before it " +
                       "profiled the router's logits GEMM and top-k together (router); run moeproxy calibrate again");
    const auto& known = profiled_kernels();
    if (std::find(known.begin(), known.end(), name) == known.end()) {
      std::string list = "bytes, gemm";
      for (const auto& k : known) list += ", " + k;
      for (const auto& k : profiled_by_parameter()) list += ", " + k.first;
      throw InputError(where(source, node) + ": unknown key " + full + "; valid keys of [[" +
                       prefix.substr(0, prefix.find('[')) + "]]: " + list);
    }
    profiles.kernels[name] = kernel_rows(source, full, node);
  }
}

std::set<std::string> kernel_names(const KernelProfiles& k) {
  std::set<std::string> names;
  if (!k.gemm.empty()) names.insert("gemm");
  for (const auto& entry : k.kernels) names.insert(entry.first);
  for (const auto& entry : k.by_parameter) names.insert(entry.first);
  return names;
}

// [[profile.sweep]] or [[profile.weight_sweep]] (`key`): per sweep its `bytes`, increasing,
// and the same kernels in every sweep.
void parse_sweeps(const std::string& source, const std::string& key, const toml::node& node,
                  std::vector<std::pair<double, KernelProfiles>>& by_sweep) {
  const toml::array* sweeps = node.as_array();
  if (!sweeps || sweeps->empty() || !sweeps->is_homogeneous(toml::node_type::table))
    throw InputError(where(source, node) + ": " + key + " must be an array of tables ([[" + key + "]])");
  for (std::size_t i = 0; i < sweeps->size(); ++i) {
    const toml::table& sweep = *(*sweeps)[i].as_table();
    const std::string prefix = key + "[" + std::to_string(i) + "].";
    const auto* bytes_node = sweep.get("bytes");
    double bytes = -1.0;
    if (bytes_node) {
      if (const auto* b = bytes_node->as_integer()) bytes = static_cast<double>(b->get());
      else if (const auto* b = bytes_node->as_floating_point()) bytes = b->get();
    }
    if (!std::isfinite(bytes) || bytes <= 0.0)
      throw InputError(where(source, bytes_node ? *bytes_node : (*sweeps)[i]) + ": " + prefix +
                       "bytes must be a positive number (bytes through the caches before each call)");
    if (!by_sweep.empty() && bytes <= by_sweep.back().first)
      throw InputError(where(source, *bytes_node) + ": " + prefix + "bytes: the sweeps' bytes must increase");
    KernelProfiles k;
    parse_kernels(source, prefix, sweep, k);
    if (!by_sweep.empty() && kernel_names(k) != kernel_names(by_sweep.front().second))
      throw InputError(where(source, (*sweeps)[i]) + ": " + key + "[" + std::to_string(i) + "] profiles other kernels than " +
                       key + "[0]: every sweep holds the same kernels");
    by_sweep.emplace_back(bytes, std::move(k));
  }
}

void parse_profile(const std::string& source, const toml::table& table, MachineProfiles& profiles) {
  for (const auto& [name_key, node] : table) {
    const std::string name(name_key.str());
    if (name == "sync_wait") {
      profiles.sync_wait = kernel_rows(source, "profile.sync_wait", node);
      continue;
    }
    if (name == "ranks") {
      const auto* i = node.as_integer();
      if (!i || i->get() < 1 || i->get() > (1 << 20))
        throw InputError(where(source, node) + ": profile.ranks must be a positive integer (the calibration's ranks)");
      profiles.ranks = static_cast<int>(i->get());
      continue;
    }
    if (name == "shared_caches") {
      const auto* b = node.as_boolean();
      if (!b)
        throw InputError(where(source, node) +
                         ": profile.shared_caches must be true or false (whether the calibration's ranks shared caches)");
      profiles.shared_caches = b->get();
      continue;
    }
    if (name != "sweep" && name != "weight_sweep") {
      const auto& k = profiled_kernels();
      const bool kernel = name == "gemm" || std::find(k.begin(), k.end(), name) != k.end() ||
                          profiled_by_parameter().count(name) > 0;
      throw InputError(where(source, node) + (kernel ? ": profile." + name +
                                                          " outside [[profile.sweep]], as calibrate wrote it before "
                                                          "kernels were timed with cold caches; run moeproxy calibrate again"
                                                    : ": unknown key profile." + name +
                                                          "; valid keys of [profile]: ranks, shared_caches, sync_wait, "
                                                          "sweep, weight_sweep"));
    }
    parse_sweeps(source, "profile." + name, node, name == "sweep" ? profiles.by_sweep : profiles.by_weight_sweep);
  }
  // Both kinds of sweep describe the same kernels, which the model looks up in either.
  if (!profiles.by_weight_sweep.empty() &&
      (profiles.by_sweep.empty() ||
       kernel_names(profiles.by_weight_sweep.front().second) != kernel_names(profiles.by_sweep.front().second)))
    throw InputError(source + ": [[profile.weight_sweep]] profiles other kernels than [[profile.sweep]]: both "
                              "kinds of sweep hold the same kernels");
}

}  // namespace

MachineSpec parse_machine(const std::string& text, const std::string& source) {
  toml::table root;
  try {
    root = toml::parse(text, source);
  } catch (const toml::parse_error& e) {
    throw InputError(source + ":" + std::to_string(e.source().begin.line) + ":" +
                     std::to_string(e.source().begin.column) + ": " + std::string(e.description()));
  }
  MachineSpec m;
  bool has_devices = false;
  for (const auto& [section_key, section_node] : root) {
    const std::string section(section_key.str());
    const toml::table* table = section_node.as_table();
    if (!known_section(section) || !table)
      throw InputError(where(source, section_node) + ": unknown " + (table ? "section [" : "key ") + section +
                       (table ? "]" : "") + "; a machine file has [machine], [compute], [memory], [intra_node], "
                       "[inter_node], [profile]");
    if (section == "profile") {
      parse_profile(source, *table, m.profiles);
      continue;
    }
    for (const auto& [name_key, node] : *table) {
      const std::string name(name_key.str()), full = section + "." + name;
      if (section == "machine" && name == "name") {
        const auto* s = node.as_string();
        if (!s) throw InputError(where(source, node) + ": " + full + " must be a string");
        m.name = s->get();
        continue;
      }
      if (section == "machine" && name == "devices_per_node") {
        const auto* i = node.as_integer();
        if (!i || i->get() < 1 || i->get() > (1 << 20))
          throw InputError(where(source, node) + ": " + full + " must be a positive integer");
        m.devices_per_node = static_cast<int>(i->get());
        has_devices = true;
        continue;
      }
      const Key* key = nullptr;
      for (const Key& k : keys())
        if (section == k.section && name == k.name) key = &k;
      if (!key)
        throw InputError(where(source, node) + ": unknown key " + full + "; valid keys of [" + section + "]: " +
                         valid_keys(section));
      double v = 0.0;
      if (const auto* i = node.as_integer()) v = static_cast<double>(i->get());
      else if (const auto* d = node.as_floating_point()) v = d->get();
      else throw InputError(where(source, node) + ": " + full + " must be a number (" + key->meaning + ")");
      if (!std::isfinite(v) || v < 0.0)
        throw InputError(where(source, node) + ": " + full + " must be a finite number >= 0 (" + key->meaning + ")");
      key->field(m) = v * key->scale;
    }
  }
  if (m.name.empty()) throw InputError(source + ": machine.name is missing");
  if (!has_devices) throw InputError(source + ": machine.devices_per_node is missing");
  for (const Key& k : keys()) {
    if (k.required && !root[k.section][k.name])
      throw InputError(source + ": " + std::string(k.section) + "." + k.name + " is missing (" + k.meaning + ")");
  }
  return m;
}

MachineSpec load_machine(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw InputError("cannot read machine file " + path);
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  return parse_machine(text, path);
}

std::string format_machine(const MachineSpec& machine, const std::map<std::string, std::string>& notes) {
  MachineSpec m = machine;
  std::ostringstream out;
  auto note = [&](const std::string& key) {
    const auto it = notes.find(key);
    return it == notes.end() ? std::string() : "  # " + it->second;
  };
  out << "[machine]\nname = \"" << m.name << "\"" << note("machine.name") << "\n";
  out << "devices_per_node = " << m.devices_per_node << note("machine.devices_per_node") << "\n";
  std::string section;
  for (const Key& k : keys()) {
    if (section != k.section) {
      section = k.section;
      out << "\n[" << section << "]\n";
    }
    out << k.name << " = " << std::setprecision(6) << k.field(m) / k.scale << note(section + "." + k.name) << "\n";
  }
  const MachineProfiles& p = m.profiles;
  if (p.empty()) return out.str();
  auto rows = [&](const std::string& name, const std::vector<std::vector<double>>& values, const std::string& key) {
    out << name << " = [";
    const char* sep = "";
    for (const auto& v : values) {
      out << sep << "[" << std::setprecision(6);
      for (std::size_t i = 0; i < v.size(); ++i) out << (i ? ", " : "") << v[i];
      out << "]";
      sep = ", ";
    }
    out << "]" << note(key) << "\n";
  };
  auto points = [&](const KernelProfile& profile) {
    std::vector<std::vector<double>> v;
    for (const auto& [size, seconds] : profile.points) v.push_back({size, seconds / micro});
    return v;
  };
  out << "\n[profile]" << note("profile") << "\n";
  if (p.ranks > 0) out << "ranks = " << p.ranks << note("profile.ranks") << "\n";
  if (p.shared_caches) out << "shared_caches = true" << note("profile.shared_caches") << "\n";
  if (!p.sync_wait.empty()) rows("sync_wait", points(p.sync_wait), "profile.sync_wait");
  auto sweep = [&](const std::string& key, double bytes, const KernelProfiles& k) {
    out << "\n[[profile." << key << "]]\nbytes = " << std::setprecision(12) << bytes << note("profile." + key + ".bytes")
        << "\n";
    for (const auto& [name, profile] : k.kernels) rows(name, points(profile), "profile." + name);
    for (const auto& [name, profile] : k.by_parameter) {
      std::vector<std::vector<double>> v;
      for (const auto& [value, by_size] : profile.by_value)
        for (const auto& [size, seconds] : by_size.points) v.push_back({value, size, seconds / micro});
      rows(name, v, "profile." + name);
    }
    if (!k.gemm.empty()) {
      std::vector<std::vector<double>> v;
      for (const auto& [elements, profile] : k.gemm.by_weight)
        for (const auto& [r, seconds] : profile.points) v.push_back({r, std::sqrt(elements), seconds / micro});
      rows("gemm", v, "profile.gemm");
    }
  };
  for (const auto& [bytes, k] : p.by_sweep) sweep("sweep", bytes, k);
  for (const auto& [bytes, k] : p.by_weight_sweep) sweep("weight_sweep", bytes, k);
  return out.str();
}

}  // namespace moeproxy::io
