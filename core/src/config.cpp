#include "moeproxy/core/config.hpp"

#include <charconv>

namespace moeproxy {

// These names are the deck's spelling: io/ parses enum values by comparing against them,
// so a name changed here changes the deck language.

const char* to_string(FfnKind v) {
  switch (v) {
    case FfnKind::dense: return "dense";
    case FfnKind::moe: return "moe";
  }
  return "?";
}

const char* to_string(Activation v) {
  switch (v) {
    case Activation::gelu: return "gelu";
    case Activation::swiglu: return "swiglu";
  }
  return "?";
}

const char* to_string(NormKind v) {
  switch (v) {
    case NormKind::layernorm: return "layernorm";
    case NormKind::rmsnorm: return "rmsnorm";
  }
  return "?";
}

const char* to_string(Precision v) {
  switch (v) {
    case Precision::fp32: return "fp32";
    case Precision::fp16: return "fp16";
  }
  return "?";
}

const char* to_string(CommBackend v) {
  switch (v) {
    case CommBackend::automatic: return "auto";
    case CommBackend::nccl: return "nccl";
    case CommBackend::mpi: return "mpi";
  }
  return "?";
}

const char* to_string(CommCompression v) {
  switch (v) {
    case CommCompression::none: return "none";
    case CommCompression::int8: return "int8";
  }
  return "?";
}

const char* to_string(VerifyMode v) {
  switch (v) {
    case VerifyMode::automatic: return "auto";
    case VerifyMode::reference: return "reference";
    case VerifyMode::file: return "file";
    case VerifyMode::none: return "none";
  }
  return "?";
}

std::string to_string(RoutingMode mode, double zipf_exponent) {
  switch (mode) {
    case RoutingMode::learned: return "learned";
    case RoutingMode::uniform: return "uniform";
    case RoutingMode::zipf: {
      // Shortest round-trip form: "zipf:1.2" reads back as exactly the same exponent.
      char buf[32];
      const auto res = std::to_chars(buf, buf + sizeof buf, zipf_exponent);
      return "zipf:" + std::string(buf, res.ptr);
    }
  }
  return "?";
}

}  // namespace moeproxy
