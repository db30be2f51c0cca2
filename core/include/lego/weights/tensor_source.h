// Named tensors read from checkpoint files, and their loading into modules (DESIGN.md, core/weights).
//
// One interface, TensorSource, covers a single safetensors file (memory-mapped, tensors alias the mapping
// when dtypes match, no copy), a sharded `*.index.json` directory, and PyTorch `.bin` zip archives. Every
// malformed file is refused with lego::Error naming the file and the tensor; nothing is trusted from a header
// before it is bounds-checked.
#pragma once

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>

#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace lego::weights {

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
  // A CPU tensor; it may alias a read-only-backed private mapping (writes stay private to the process).
  virtual at::Tensor get(const std::string& name) const = 0;
  // Where the tensors come from, for messages.
  virtual std::string describe() const = 0;
};

// Opens `path`: a .safetensors file, a .bin file, an `*.index.json`, or a directory holding
// model.safetensors[.index.json] or pytorch_model.bin[.index.json] (first match in that order).
std::unique_ptr<TensorSource> open_tensor_source(const std::filesystem::path& path);

// Opens one safetensors file through mmap, validating the whole header first.
std::unique_ptr<TensorSource> open_safetensors(const std::filesystem::path& file);

// Opens one PyTorch zip checkpoint (`torch.save` of a state dict).
std::unique_ptr<TensorSource> open_torch_bin(const std::filesystem::path& file);

// safetensors dtype string ("F32", "BF16", ...) <-> torch dtype; unknown names throw Unsupported.
at::ScalarType dtype_from_safetensors(const std::string& name);
std::string dtype_to_safetensors(at::ScalarType dtype);

// Writes tensors (in the given order) and string metadata as one safetensors file, atomically: a
// temporary file beside it is fsynced and renamed over `file`.
void write_safetensors(const std::filesystem::path& file,
                       const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

struct LoadReport {
  std::vector<std::string> loaded;  // module names filled from the source
  std::vector<std::string> unused;  // source names under the prefix that no module parameter took
};

// Fills every parameter and persistent buffer of `module` from `source` (name = prefix + module name).
// Each tensor's shape is checked against the module's. Parameters take `dtype` (default: the module's
// current dtype) and adopt the source tensor's storage when no conversion is needed: a mapped
// safetensors file is then used in place, without a second copy. Missing tensors or shape mismatches
// throw lego::Error naming the file, the tensor and both shapes.
LoadReport load_module(torch::nn::Module& module, const TensorSource& source, const std::string& prefix = "",
                       std::optional<at::ScalarType> dtype = std::nullopt);

}  // namespace lego::weights
