// Fuzzes the safetensors reader (open_safetensors) with whole files, and the writer with what it read:
// every tensor a file yields is written back with write_safetensors and must read back byte for byte.
#include <ATen/ATen.h>

#include <cstring>
#include <utility>
#include <vector>

#include "fuzz_support.h"
#include "lego/weights/tensor_source.h"
#include "tensor_checks.h"

namespace {

void check_round_trip(const lego::TensorSource& source) {
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  for (const auto& name : source.names()) tensors.emplace_back(name, source.get(name));
  const auto copy_file = lego::fuzz::scratch_dir() / "round_trip.safetensors";
  lego::weights::write_safetensors(copy_file, tensors);
  const auto copy = lego::weights::open_safetensors(copy_file);
  lego::fuzz::check(copy->names() == source.names(), "round trip changed the tensor names");
  for (const auto& [name, original] : tensors) {
    const at::Tensor back = copy->get(name);
    const std::string what = "round trip of '" + name + "': ";
    lego::fuzz::check(back.scalar_type() == original.scalar_type(), what + "dtype changed");
    lego::fuzz::check(back.sizes() == original.sizes(), what + "shape changed");
    const at::Tensor a = original.contiguous();
    const at::Tensor b = back.contiguous();
    lego::fuzz::check(a.nbytes() == b.nbytes(), what + "size changed");
    // An empty tensor may have no data pointer at all.
    if (a.nbytes() > 0) lego::fuzz::check(std::memcmp(a.data_ptr(), b.data_ptr(), a.nbytes()) == 0, what + "bytes changed");
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto file = lego::fuzz::write_input("input.safetensors", data, size);
  std::unique_ptr<lego::TensorSource> source;
  if (!lego::fuzz::refused_or_done([&] { source = lego::weights::open_safetensors(file); })) return 0;
  lego::fuzz::check_every_tensor(*source);
  check_round_trip(*source);
  return 0;
}
