#pragma once
// Machine descriptions for `moeproxy predict` (inputs/machines/*.toml, docs/predict.md):
// TOML in human units (TFLOP/s, GB/s, GB, microseconds) <-> MachineSpec in SI units.
// Unknown keys, wrong types and missing required figures are InputErrors naming the key and
// its line.

#include <map>
#include <string>

#include "moeproxy/core/perf_model.hpp"

namespace moeproxy::io {

MachineSpec parse_machine(const std::string& text, const std::string& source_name);
// Reads the file at path, then as parse_machine. A missing or unreadable file is an InputError.
MachineSpec load_machine(const std::string& path);

// The machine as a file parse_machine reads back; `notes` maps a key ("compute.peak_tflops_fp32")
// to the comment written beside it (where the figure came from).
std::string format_machine(const MachineSpec& machine, const std::map<std::string, std::string>& notes);

}  // namespace moeproxy::io
