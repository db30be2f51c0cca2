// Read-only named tensors handed to modules, and loading them into a module (DESIGN.md, sdk/weights.h).
//
// TensorSource is what the core's checkpoint readers (core/weights) implement and what a plugin receives
// to fill its parameters: one interface and one loader for the LLM and every modality.
#pragma once

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

namespace lego {

struct TensorInfo {
  std::string name;
  at::ScalarType dtype;
  std::vector<int64_t> shape;
  std::filesystem::path file;  // the file that holds it (for error messages)
};

class TensorSource {
 public:
  virtual ~TensorSource() = default;
  // Every tensor name, sorted.
  virtual std::vector<std::string> names() const = 0;
  virtual bool contains(const std::string& name) const = 0;
  // Throws lego::Error(NotFound) naming the source and the tensor when absent.
  virtual TensorInfo info(const std::string& name) const = 0;
  // A CPU tensor; it may alias a private file mapping (writes stay private to the process).
  virtual at::Tensor get(const std::string& name) const = 0;
  // Where the tensors come from, for messages.
  virtual std::string describe() const = 0;
};

struct LoadReport {
  std::vector<std::string> loaded;  // source names that filled a parameter or buffer
  std::vector<std::string> unused;  // source names under the prefix that nothing took
};

// Fills every parameter and persistent buffer of `module` from `source` (name = prefix + module name).
// Each tensor's shape is checked against the module's. Parameters take `dtype` (default: the module's
// current dtype) and adopt the source tensor's storage when no conversion is needed: a mapped
// safetensors file is then used in place, without a second copy. Integer tensors (quantised blocks)
// keep their dtype. Missing tensors or shape mismatches throw lego::Error naming the file, the tensor and
// both shapes.
LoadReport load_module(torch::nn::Module& module, const TensorSource& source, const std::string& prefix = "",
                       std::optional<at::ScalarType> dtype = std::nullopt);

// A module's parameters named as a checkpoint holds them: `prefix` + the module's own names.
std::vector<std::pair<std::string, at::Tensor>> prefixed_parameters(torch::nn::Module& module, const std::string& prefix);

// Dimension `dim` of the tensor `name`'s shape; throws naming the source and tensor when it is absent or
// has too few dimensions. Imports read architecture sizes from shapes with it.
int64_t tensor_dim(const TensorSource& source, const std::string& name, size_t dim);
// How many numbered blocks `prefix`N. the names hold (highest N + 1; 0 when none).
int64_t count_numbered(const std::vector<std::string>& names, const std::string& prefix);
// Whether any name starts with `prefix`.
bool has_prefix(const std::vector<std::string>& names, const std::string& prefix);

// "[2, 3]" for messages.
std::string shape_string(at::IntArrayRef shape);

}  // namespace lego
