// What every weight-reader target checks of the tensors a TensorSource hands out: info() agrees with the
// tensor, and the tensor's extent lies inside its storage (its first and last bytes are read, so ASan sees
// a tensor that points outside its file or allocation).
#pragma once

#include <ATen/ATen.h>

#include <string>

#include "fuzz_support.h"
#include "lego/sdk/weights.h"

namespace lego::fuzz {

inline void check_tensor(const TensorSource& source, const std::string& name) {
  check(source.contains(name), "names() lists '" + name + "' but contains() denies it");
  const TensorInfo info = source.info(name);
  const at::Tensor t = source.get(name);
  const std::string what = source.describe() + " tensor '" + name + "': ";
  check(t.defined() && t.device().is_cpu(), what + "not a defined CPU tensor");
  check(t.scalar_type() == info.dtype, what + "dtype differs from info()");
  check(t.sizes().vec() == info.shape, what + "shape differs from info()");
  if (t.numel() == 0) return;
  const auto item = static_cast<int64_t>(t.element_size());
  int64_t last = t.storage_offset();
  check(last >= 0, what + "negative storage offset");
  for (int64_t d = 0; d < t.dim(); ++d) {
    check(t.size(d) > 0 && t.stride(d) >= 0, what + "negative stride");
    int64_t step = 0;
    check(!__builtin_mul_overflow(t.size(d) - 1, t.stride(d), &step) && !__builtin_add_overflow(last, step, &last),
          what + "extent overflows");
  }
  int64_t end_byte = 0;
  check(!__builtin_mul_overflow(last + 1, item, &end_byte), what + "extent overflows");
  check(static_cast<uint64_t>(end_byte) <= t.storage().nbytes(),
        what + "reaches byte " + std::to_string(end_byte) + " of a " + std::to_string(t.storage().nbytes()) +
            "-byte storage");
  const auto* base = static_cast<const volatile uint8_t*>(t.storage().data());
  check(base != nullptr, what + "storage without data");
  (void)base[t.storage_offset() * item];
  (void)base[end_byte - 1];
}

inline void check_every_tensor(const TensorSource& source) {
  for (const auto& name : source.names()) check_tensor(source, name);
}

}  // namespace lego::fuzz
