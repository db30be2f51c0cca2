// Checkpoint readers and the safetensors writer (DESIGN.md, core/weights).
//
// The TensorSource interface (lego/sdk/weights.h) is implemented here for a single safetensors file
// (memory-mapped, tensors alias the mapping, no copy), sharded `*.index.json` directories and PyTorch
// `.bin` zip archives. Every malformed file is refused with lego::Error naming the file and the tensor;
// nothing is trusted from a header before it is bounds-checked.
#pragma once

#include <ATen/core/Tensor.h>

#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "lego/sdk/weights.h"

namespace lego::weights {

using lego::LoadReport;
using lego::TensorInfo;
using lego::TensorSource;
using lego::load_module;

// Opens `path`: a .safetensors file, a .bin file, an `*.index.json`, or a directory holding
// model.safetensors[.index.json] or pytorch_model.bin[.index.json] (first match in that order).
std::unique_ptr<TensorSource> open_tensor_source(const std::filesystem::path& path);

// Opens one safetensors file through mmap, validating the whole header first.
std::unique_ptr<TensorSource> open_safetensors(const std::filesystem::path& file);

// Opens one PyTorch zip checkpoint (`torch.save` of a state dict).
std::unique_ptr<TensorSource> open_torch_bin(const std::filesystem::path& file);

// Maps the pages under a CPU tensor's bytes now, for reading (madvise MADV_POPULATE_READ; nothing where the
// kernel lacks it): a model mapped from its files then takes its page faults while it loads, not within its
// first prompt, and its pages stay shared with the page cache. False where the kernel mapped nothing (older
// than Linux 5.14, an undefined, empty or non-CPU tensor).
bool populate(const at::Tensor& tensor);

// safetensors dtype string ("F32", "BF16", ...) <-> torch dtype; unknown names throw Unsupported.
at::ScalarType dtype_from_safetensors(const std::string& name);
std::string dtype_to_safetensors(at::ScalarType dtype);

// Writes tensors (in the given order) and string metadata as one safetensors file, atomically: a
// temporary file beside it is fsynced and renamed over `file`.
void write_safetensors(const std::filesystem::path& file,
                       const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

// One tensor of a streamed safetensors file: what the header says of it, known before any data exists.
struct TensorSpec {
  std::string name;
  at::ScalarType dtype;
  std::vector<int64_t> shape;
};

// Writes a safetensors file whose tensors are made one at a time: the header comes from `specs`, then
// `produce(i)` is asked for tensor i, in order, and its bytes are written before the next is asked for.
// A file larger than memory (a 7B model from init-model or quantize) is written this way. Each produced
// tensor must be on the CPU with exactly its spec's dtype and shape, or lego::Error(InvalidArgument) is thrown.
// Atomic like write_safetensors: an exception from `produce` leaves `file` as it was.
void write_safetensors_streamed(const std::filesystem::path& file, const std::vector<TensorSpec>& specs,
                                const std::function<at::Tensor(size_t)>& produce,
                                const std::map<std::string, std::string>& metadata = {});

}  // namespace lego::weights
