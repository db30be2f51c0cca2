// Fuzzes the PyTorch .bin reader (open_torch_bin): zip archives written by torch.save, as a checkpoint
// importer meets them. libtorch's own unpickler does the parsing; lego must turn what it refuses into a
// lego::Error and hand out only tensors that lie inside their storage.
#include "fuzz_support.h"
#include "lego/weights/tensor_source.h"
#include "tensor_checks.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto file = lego::fuzz::write_input("pytorch_model.bin", data, size);
  std::unique_ptr<lego::TensorSource> source;
  if (!lego::fuzz::refused_or_done([&] { source = lego::weights::open_torch_bin(file); })) return 0;
  lego::fuzz::check_every_tensor(*source);
  return 0;
}
