// Fuzzes the sharded-index reader: the input is a model.safetensors.index.json in a folder that also holds
// two small shards, a sub-folder with a shard, a FIFO and a link that leads out of the folder, so the
// fuzzer can name each of them. Opened through open_tensor_source, as a model directory is.
#include <sys/stat.h>

#include <ATen/ATen.h>

#include "fuzz_support.h"
#include "lego/weights/tensor_source.h"
#include "tensor_checks.h"

namespace {

std::filesystem::path model_dir() {
  static const std::filesystem::path dir = [] {
    const auto d = lego::fuzz::scratch_dir() / "model";
    std::filesystem::create_directories(d / "sub");
    using lego::weights::write_safetensors;
    write_safetensors(d / "model-00001-of-00002.safetensors",
                      {{"a.weight", at::arange(6, at::kFloat).reshape({2, 3})}, {"a.bias", at::ones({3}, at::kHalf)}});
    write_safetensors(d / "model-00002-of-00002.safetensors", {{"b.weight", at::zeros({4}, at::kLong)}});
    write_safetensors(d / "sub" / "inner.safetensors", {{"c.weight", at::ones({1}, at::kBFloat16)}});
    write_safetensors(lego::fuzz::scratch_dir() / "outside.safetensors", {{"d.weight", at::ones({2})}});
    std::filesystem::create_symlink("../outside.safetensors", d / "escape.safetensors");
    ::mkfifo((d / "fifo.safetensors").c_str(), 0600);
    return d;
  }();
  return dir;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  model_dir();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto index = lego::fuzz::write_input("model/model.safetensors.index.json", data, size);
  std::unique_ptr<lego::TensorSource> source;
  if (!lego::fuzz::refused_or_done([&] { source = lego::weights::open_tensor_source(model_dir()); })) return 0;
  lego::fuzz::check_every_tensor(*source);
  return 0;
}
