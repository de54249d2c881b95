#pragma once
// Model weights in an HDF5 checkpoint (layout: docs/checkpoint.md). Every rank opens the file
// read-only on its own and reads just the blocks of its shard (independent hyperslab reads),
// so no collective can hang on a rank that fails.

#include <memory>
#include <string>

#include "moeproxy/core/config.hpp"
#include "moeproxy/core/weight_source.hpp"

namespace moeproxy::io {

constexpr int checkpoint_format_version = 1;

// Opens `path` and checks it against `model` before anything big is allocated: an HDF5 file,
// the root attributes giving the model shape, every dataset present with its global shape and
// a floating-point type. Throws InputError naming the file, the key or dataset, and the
// mismatch.
std::unique_ptr<WeightSource> open_checkpoint(const std::string& path, const ModelConfig& model);

// Writes every weight of `model`, read from `source`, as a checkpoint at `path` (float32, one
// process). Throws std::runtime_error when the file cannot be written.
void write_checkpoint(const std::string& path, const ModelConfig& model, const WeightSource& source);

}  // namespace moeproxy::io
