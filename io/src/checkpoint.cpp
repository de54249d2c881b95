// HDF5 checkpoints (docs/checkpoint.md): validation on open, hyperslab reads of a shard's
// blocks, and the writer behind `moeproxy export-checkpoint`.

#include "moeproxy/io/checkpoint.hpp"

#include "hdf5_support.hpp"

#include <hdf5.h>

#include <cstring>
#include <filesystem>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <utility>
#include <vector>

namespace moeproxy::io {
namespace {

using hdf5::Handle;

std::string key_of(const std::string& path) { return "model.checkpoint = \"" + path + "\""; }

std::string dims_text(const std::vector<std::int64_t>& dims) {
  std::ostringstream s;
  s << "[";
  for (std::size_t i = 0; i < dims.size(); ++i) s << (i ? ", " : "") << dims[i];
  s << "]";
  return s.str();
}

// Each link of `path` (a/b/c) exists: H5Lexists needs its parents to.
bool path_exists(hid_t file, const std::string& path) {
  std::size_t pos = 0;
  while (true) {
    pos = path.find('/', pos + 1);
    const std::string prefix = path.substr(0, pos);
    if (H5Lexists(file, prefix.c_str(), H5P_DEFAULT) <= 0) return false;
    if (pos == std::string::npos) return true;
  }
}

std::optional<std::string> string_attr(hid_t file, const char* name) {
  if (H5Aexists(file, name) <= 0) return std::nullopt;
  Handle a = MOEPROXY_HANDLE(H5Aopen(file, name, H5P_DEFAULT), H5Aclose);
  Handle t = MOEPROXY_HANDLE(H5Aget_type(a.id()), H5Tclose);
  if (H5Tget_class(t.id()) != H5T_STRING) return std::nullopt;
  if (H5Tis_variable_str(t.id()) > 0) {
    Handle mem = MOEPROXY_HANDLE(H5Tcopy(H5T_C_S1), H5Tclose);
    MOEPROXY_H5(H5Tset_size(mem.id(), H5T_VARIABLE));
    MOEPROXY_H5(H5Tset_cset(mem.id(), H5Tget_cset(t.id())));
    char* value = nullptr;
    MOEPROXY_H5(H5Aread(a.id(), mem.id(), &value));
    std::string s = value ? value : "";
    H5free_memory(value);
    return s;
  }
  const std::size_t n = H5Tget_size(t.id());
  std::vector<char> buf(n + 1, '\0');
  Handle mem = MOEPROXY_HANDLE(H5Tcopy(H5T_C_S1), H5Tclose);
  MOEPROXY_H5(H5Tset_size(mem.id(), n + 1));
  MOEPROXY_H5(H5Tset_cset(mem.id(), H5Tget_cset(t.id())));
  MOEPROXY_H5(H5Aread(a.id(), mem.id(), buf.data()));
  return std::string(buf.data());
}

// A numeric scalar attribute converted to T by HDF5; nullopt when absent or not a number.
template <class T>
std::optional<T> number_attr(hid_t file, const char* name, hid_t mem_type) {
  if (H5Aexists(file, name) <= 0) return std::nullopt;
  Handle a = MOEPROXY_HANDLE(H5Aopen(file, name, H5P_DEFAULT), H5Aclose);
  Handle t = MOEPROXY_HANDLE(H5Aget_type(a.id()), H5Tclose);
  const H5T_class_t c = H5Tget_class(t.id());
  if (c != H5T_INTEGER && c != H5T_FLOAT) return std::nullopt;
  Handle s = MOEPROXY_HANDLE(H5Aget_space(a.id()), H5Sclose);
  if (H5Sget_simple_extent_npoints(s.id()) != 1) return std::nullopt;
  T v{};
  MOEPROXY_H5(H5Aread(a.id(), mem_type, &v));
  return v;
}

// The root attributes that fix the model's shape, with the deck's values.
struct ShapeKey {
  const char* name;
  std::string expected;
  bool text;
};

std::vector<ShapeKey> shape_keys(const ModelConfig& m) {
  return {{"layers", std::to_string(m.layers), false},
          {"hidden", std::to_string(m.hidden), false},
          {"heads", std::to_string(m.heads), false},
          {"kv_heads", std::to_string(m.effective_kv_heads()), false},
          {"head_dim", std::to_string(m.effective_head_dim()), false},
          {"ffn", to_string(m.ffn), true},
          {"ffn_hidden", std::to_string(m.ffn_hidden), false},
          {"experts", std::to_string(m.is_moe() ? m.experts : 0), false},
          {"activation", to_string(m.activation), true},
          {"norm", to_string(m.norm), true}};
}

// The deck key behind a root attribute, for the message.
std::string deck_key(const char* name) {
  const std::string n = name;
  if (n == "kv_heads" || n == "head_dim") return "model." + n + " (effective)";
  return "model." + n;
}

class Hdf5Checkpoint : public WeightSource {
 public:
  Hdf5Checkpoint(std::string path, Handle file, const ModelConfig& model)
      : path_(std::move(path)), file_(std::move(file)) {
    for (const TensorShape& t : weight_tensors(model)) shapes_.push_back(t);
  }

  void read(const TensorRef& tensor, const IndexSpans& rows, const IndexSpans& cols,
            float* out) const override {
    const TensorShape* shape = nullptr;
    for (const TensorShape& t : shapes_)
      if (t.ref.kind == tensor.kind && t.ref.layer == tensor.layer) shape = &t;
    if (!shape) throw std::runtime_error(key_of(path_) + ": no tensor of this kind in the model");
    try {
      read_block(*shape, tensor.expert, rows, cols, out);
    } catch (const std::runtime_error& e) {
      throw std::runtime_error(key_of(path_) + ": reading dataset /" + shape->name + ": " + e.what());
    }
  }

  std::string describe() const override { return "checkpoint " + path_; }

 private:
  void read_block(const TensorShape& shape, int expert, const IndexSpans& rows, const IndexSpans& cols,
                  float* out) const {
    Handle ds = MOEPROXY_HANDLE(H5Dopen2(file_.id(), shape.name.c_str(), H5P_DEFAULT), H5Dclose);
    Handle file_space = MOEPROXY_HANDLE(H5Dget_space(ds.id()), H5Sclose);
    MOEPROXY_H5(H5Sselect_none(file_space.id()));
    // Row-major order of the union of blocks = the caller's order, since spans ascend.
    for (const IndexSpan& r : rows)
      for (const IndexSpan& c : cols) {
        std::vector<hsize_t> start, count;
        if (shape.per_expert) start.push_back(static_cast<hsize_t>(expert)), count.push_back(1);
        if (!shape.is_vector()) start.push_back(static_cast<hsize_t>(r.begin)), count.push_back(static_cast<hsize_t>(r.count));
        start.push_back(static_cast<hsize_t>(c.begin));
        count.push_back(static_cast<hsize_t>(c.count));
        MOEPROXY_H5(H5Sselect_hyperslab(file_space.id(), H5S_SELECT_OR, start.data(), nullptr, count.data(), nullptr));
      }
    const hsize_t n = static_cast<hsize_t>(total_count(rows) * total_count(cols));
    if (n == 0) return;
    Handle mem_space = MOEPROXY_HANDLE(H5Screate_simple(1, &n, nullptr), H5Sclose);
    MOEPROXY_H5(H5Dread(ds.id(), H5T_NATIVE_FLOAT, mem_space.id(), file_space.id(), H5P_DEFAULT, out));
  }

  std::string path_;
  Handle file_;
  std::vector<TensorShape> shapes_;
};

// Attributes and every tensor of `model` from `source` into the open file `file`.
void write_contents(hid_t file, const ModelConfig& model, const WeightSource& source) {
  Handle scalar = MOEPROXY_HANDLE(H5Screate(H5S_SCALAR), H5Sclose);
  auto put_number = [&](const char* name, hid_t type, const void* v) {
    Handle a = MOEPROXY_HANDLE(H5Acreate2(file, name, type, scalar.id(), H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
    MOEPROXY_H5(H5Awrite(a.id(), type, v));
  };
  auto put_string = [&](const char* name, const std::string& v) {
    Handle t = MOEPROXY_HANDLE(H5Tcopy(H5T_C_S1), H5Tclose);
    MOEPROXY_H5(H5Tset_size(t.id(), H5T_VARIABLE));
    MOEPROXY_H5(H5Tset_cset(t.id(), H5T_CSET_UTF8));
    Handle a = MOEPROXY_HANDLE(H5Acreate2(file, name, t.id(), scalar.id(), H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
    const char* text = v.c_str();
    MOEPROXY_H5(H5Awrite(a.id(), t.id(), &text));
  };
  const long long version = checkpoint_format_version;
  put_number("format_version", H5T_NATIVE_LLONG, &version);
  for (const ShapeKey& k : shape_keys(model)) {
    if (k.text) {
      put_string(k.name, k.expected);
    } else {
      const long long v = std::stoll(k.expected);
      put_number(k.name, H5T_NATIVE_LLONG, &v);
    }
  }
  const long long top_k = model.top_k;
  if (model.is_moe()) put_number("top_k", H5T_NATIVE_LLONG, &top_k);
  put_number("rope_theta", H5T_NATIVE_DOUBLE, &model.rope_theta);
  put_number("norm_eps", H5T_NATIVE_DOUBLE, &model.norm_eps);
  put_string("source", source.describe());

  Handle lcpl = MOEPROXY_HANDLE(H5Pcreate(H5P_LINK_CREATE), H5Pclose);
  MOEPROXY_H5(H5Pset_create_intermediate_group(lcpl.id(), 1));
  for (const TensorShape& t : weight_tensors(model)) {
    const std::vector<std::int64_t> stored = t.stored_dims();
    const std::vector<hsize_t> dims(stored.begin(), stored.end());
    Handle space = MOEPROXY_HANDLE(H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr), H5Sclose);
    Handle ds = MOEPROXY_HANDLE(H5Dcreate2(file, t.name.c_str(), H5T_IEEE_F32LE, space.id(), lcpl.id(),
                                          H5P_DEFAULT, H5P_DEFAULT), H5Dclose);
    std::vector<float> block(static_cast<std::size_t>(t.rows * t.cols));
    for (std::int64_t e = 0; e < t.experts; ++e) {
      source.read(TensorRef{t.ref.kind, t.ref.layer, static_cast<int>(e)}, {IndexSpan{0, t.rows}},
                  {IndexSpan{0, t.cols}}, block.data());
      const hsize_t n = block.size();
      Handle mem = MOEPROXY_HANDLE(H5Screate_simple(1, &n, nullptr), H5Sclose);
      Handle file_space = MOEPROXY_HANDLE(H5Dget_space(ds.id()), H5Sclose);
      if (t.per_expert) {
        const hsize_t start[3] = {static_cast<hsize_t>(e), 0, 0};
        const hsize_t count[3] = {1, static_cast<hsize_t>(t.rows), static_cast<hsize_t>(t.cols)};
        MOEPROXY_H5(H5Sselect_hyperslab(file_space.id(), H5S_SELECT_SET, start, nullptr, count, nullptr));
      }
      MOEPROXY_H5(H5Dwrite(ds.id(), H5T_NATIVE_FLOAT, mem.id(), file_space.id(), H5P_DEFAULT, block.data()));
    }
  }
}

}  // namespace

std::unique_ptr<WeightSource> open_checkpoint(const std::string& path, const ModelConfig& model) {
  const std::string key = key_of(path);
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) throw InputError(key + ": no such file");
  if (std::filesystem::is_directory(path, ec)) throw InputError(key + " is a directory, not an HDF5 file");
  hdf5::QuietHdf5Errors quiet;
  if (H5Fis_hdf5(path.c_str()) <= 0)
    throw InputError(key + " is not an HDF5 file (docs/checkpoint.md describes the layout)");
  const hid_t id = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  if (id < 0) throw InputError(key + ": cannot open the HDF5 file for reading");
  Handle file = MOEPROXY_HANDLE(id, H5Fclose);

  const auto version = number_attr<long long>(file.id(), "format_version", H5T_NATIVE_LLONG);
  if (!version)
    throw InputError(key + ": no root attribute format_version; not a moeproxy checkpoint (docs/checkpoint.md)");
  if (*version != checkpoint_format_version)
    throw InputError(key + ": format_version = " + std::to_string(*version) + ", this moeproxy reads " +
                     std::to_string(checkpoint_format_version));
  for (const ShapeKey& k : shape_keys(model)) {
    std::string got;
    if (k.text) {
      const auto v = string_attr(file.id(), k.name);
      if (!v) throw InputError(key + ": root attribute " + k.name + " is missing or not a string");
      got = *v;
    } else {
      const auto v = number_attr<long long>(file.id(), k.name, H5T_NATIVE_LLONG);
      if (!v) throw InputError(key + ": root attribute " + k.name + " is missing or not a number");
      got = std::to_string(*v);
    }
    if (got != k.expected)
      throw InputError(key + ": the checkpoint has " + k.name + " = " + got + " but the deck has " +
                       deck_key(k.name) + " = " + k.expected);
  }
  // Computation settings the weights were trained with: checked when the file records them.
  if (const auto k = number_attr<long long>(file.id(), "top_k", H5T_NATIVE_LLONG); k && model.is_moe() && *k != model.top_k)
    throw InputError(key + ": the checkpoint has top_k = " + std::to_string(*k) + " but the deck has model.top_k = " +
                     std::to_string(model.top_k));
  for (const auto& [name, value] : {std::pair<const char*, double>{"rope_theta", model.rope_theta},
                                    std::pair<const char*, double>{"norm_eps", model.norm_eps}}) {
    const auto v = number_attr<double>(file.id(), name, H5T_NATIVE_DOUBLE);
    if (v && *v != value) {
      std::ostringstream s;
      s << key << ": the checkpoint has " << name << " = " << *v << " but the deck has model." << name << " = " << value;
      throw InputError(s.str());
    }
  }
  for (const TensorShape& t : weight_tensors(model)) {
    if (!path_exists(file.id(), t.name)) throw InputError(key + ": dataset /" + t.name + " is missing");
    Handle ds = MOEPROXY_HANDLE(H5Dopen2(file.id(), t.name.c_str(), H5P_DEFAULT), H5Dclose);
    Handle type = MOEPROXY_HANDLE(H5Dget_type(ds.id()), H5Tclose);
    if (H5Tget_class(type.id()) != H5T_FLOAT)
      throw InputError(key + ": dataset /" + t.name + " is not floating point (float32 or float16 expected)");
    Handle space = MOEPROXY_HANDLE(H5Dget_space(ds.id()), H5Sclose);
    const int rank = MOEPROXY_H5(H5Sget_simple_extent_ndims(space.id()));
    std::vector<hsize_t> dims(static_cast<std::size_t>(rank));
    MOEPROXY_H5(H5Sget_simple_extent_dims(space.id(), dims.data(), nullptr));
    const std::vector<std::int64_t> got(dims.begin(), dims.end()), want = t.stored_dims();
    if (got != want)
      throw InputError(key + ": dataset /" + t.name + " has shape " + dims_text(got) + ", the deck's model needs " +
                       dims_text(want));
  }
  return std::make_unique<Hdf5Checkpoint>(path, std::move(file), model);
}

void write_checkpoint(const std::string& path, const ModelConfig& model, const WeightSource& source) {
  hdf5::QuietHdf5Errors quiet;
  const std::string partial = path + ".partial";
  try {
    const hid_t file_id = H5Fcreate(partial.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    if (file_id < 0) throw std::runtime_error("cannot create " + partial);
    Handle file(file_id, H5Fclose);
    write_contents(file.id(), model, source);
    // Closing flushes: a full disk shows up here, and must not leave a renamed, short file.
    MOEPROXY_H5(file.close());
  } catch (const std::runtime_error& e) {
    std::error_code ignored;
    std::filesystem::remove(partial, ignored);
    throw std::runtime_error("cannot write checkpoint " + path + ": " + e.what());
  }
  std::error_code ec;
  std::filesystem::rename(partial, path, ec);
  if (ec) throw std::runtime_error("cannot rename " + partial + " to " + path + ": " + ec.message());
}

}  // namespace moeproxy::io
