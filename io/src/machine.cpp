#include "moeproxy/io/machine.hpp"

#include <toml++/toml.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <functional>
#include <iomanip>
#include <iterator>
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

// [profile]: per kernel an array of [size, microseconds] (gemm: [rows, n, microseconds] for
// [rows, n] x [n, n]; attention: [head_dim, size, microseconds]), as calibrate measured them.
std::vector<std::vector<double>> profile_rows(const std::string& source, const std::string& key,
                                              const toml::node& node, std::size_t width, const char* shape) {
  const std::string full = "profile." + key;
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

void parse_profile(const std::string& source, const toml::table& table, KernelProfiles& profiles) {
  for (const auto& [name_key, node] : table) {
    const std::string name(name_key.str());
    if (name == "gemm") {
      for (const auto& r : profile_rows(source, name, node, 3, "[rows, n, microseconds]")) {
        const double elements = r[1] * r[1];
        auto& by = profiles.gemm.by_weight;
        auto it = std::find_if(by.begin(), by.end(), [&](const auto& w) { return w.first >= elements; });
        if (it == by.end() || it->first != elements) it = by.insert(it, {elements, KernelProfile{}});
        auto& points = it->second.points;
        if (!points.empty() && r[0] <= points.back().first)
          throw InputError(where(source, node) + ": profile.gemm: rows must increase for each n (n = " +
                           std::to_string(static_cast<long>(r[1])) + ")");
        points.emplace_back(r[0], r[2] * micro);
      }
      continue;
    }
    const auto& attention = profiled_attention();
    if (std::find(attention.begin(), attention.end(), name) != attention.end()) {
      const toml::array* rows = node.as_array();
      const toml::array* first = rows && !rows->empty() ? (*rows)[0].as_array() : nullptr;
      if (first && first->size() == 2)
        throw InputError(where(source, node) + ": profile." + name +
                         " has [size, microseconds] rows, as calibrate wrote them before attention was profiled by "
                         "head width: rows are [head_dim, size, microseconds] now; run moeproxy calibrate again");
      auto& by = profiles.attention[name].by_head_dim;
      for (const auto& r : profile_rows(source, name, node, 3, "[head_dim, size, microseconds]")) {
        auto it = std::find_if(by.begin(), by.end(), [&](const auto& h) { return h.first >= r[0]; });
        if (it == by.end() || it->first != r[0]) it = by.insert(it, {r[0], KernelProfile{}});
        auto& points = it->second.points;
        if (!points.empty() && r[1] <= points.back().first)
          throw InputError(where(source, node) + ": profile." + name + ": sizes must increase for each head_dim (" +
                           std::to_string(static_cast<long>(r[0])) + ")");
        points.emplace_back(r[1], r[2] * micro);
      }
      continue;
    }
    const auto& known = profiled_kernels();
    if (std::find(known.begin(), known.end(), name) == known.end()) {
      std::string list = "gemm";
      for (const auto& k : known) list += ", " + k;
      for (const auto& k : attention) list += ", " + k;
      throw InputError(where(source, node) + ": unknown key profile." + name + "; valid keys of [profile]: " + list);
    }
    KernelProfile& p = profiles.kernels[name];
    for (const auto& r : profile_rows(source, name, node, 2, "[size, microseconds]")) {
      if (!p.points.empty() && r[0] <= p.points.back().first)
        throw InputError(where(source, node) + ": profile." + name + ": sizes must increase");
      p.points.emplace_back(r[0], r[1] * micro);
    }
  }
}

std::string format_point(std::initializer_list<double> values) {
  std::ostringstream out;
  out << "[" << std::setprecision(6);
  const char* sep = "";
  for (double v : values) {
    out << sep << v;
    sep = ", ";
  }
  return out.str() + "]";
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
  const KernelProfiles& p = m.profiles;
  if (p.kernels.empty() && p.attention.empty() && p.gemm.empty()) return out.str();
  out << "\n[profile]" << note("profile") << "\n";
  for (const auto& [name, profile] : p.kernels) {
    out << name << " = [";
    const char* sep = "";
    for (const auto& [size, seconds] : profile.points) {
      out << sep << format_point({size, seconds / micro});
      sep = ", ";
    }
    out << "]" << note("profile." + name) << "\n";
  }
  for (const auto& [name, profile] : p.attention) {
    out << name << " = [";
    const char* sep = "";
    for (const auto& [head_dim, by_size] : profile.by_head_dim)
      for (const auto& [size, seconds] : by_size.points) {
        out << sep << format_point({head_dim, size, seconds / micro});
        sep = ", ";
      }
    out << "]" << note("profile." + name) << "\n";
  }
  if (!p.gemm.empty()) {
    out << "gemm = [";
    const char* sep = "";
    for (const auto& [elements, profile] : p.gemm.by_weight)
      for (const auto& [rows, seconds] : profile.points) {
        out << sep << format_point({rows, std::sqrt(elements), seconds / micro});
        sep = ", ";
      }
    out << "]" << note("profile.gemm") << "\n";
  }
  return out.str();
}

}  // namespace moeproxy::io
