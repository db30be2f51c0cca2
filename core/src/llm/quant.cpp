#include "lego/llm/quant.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/Half.h>
#include <torch/nn/functional/linear.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include <sys/mman.h>
#include <unistd.h>

#include "lego/sdk/error.h"
#include "lego/sdk/nn/linear.h"

namespace lego::llm {

void QuantFormat::check(const std::string& what) const {
  const std::string where = what.empty() ? "" : what + ": ";
  if (format == WeightFormat::Dense) throw Error(ErrorKind::InvalidArgument, where + "not a quantised format");
  if (group != 32 && group != 64 && group != 128) {
    throw Error(ErrorKind::InvalidArgument, where + "quantisation group " + std::to_string(group) + " (want 32, 64 or 128)");
  }
}

WeightFormat parse_weight_format(const std::string& name, const std::string& flag) {
  if (name == "int8") return WeightFormat::Int8;
  if (name == "int4") return WeightFormat::Int4;
  throw Error(ErrorKind::InvalidArgument, flag + " '" + name + "': expected int8 or int4");
}

std::string weight_format_name(WeightFormat format) {
  switch (format) {
    case WeightFormat::Int8: return "int8";
    case WeightFormat::Int4: return "int4";
    default: return "dense";
  }
}

torch::Tensor quantize_rows(const torch::Tensor& weight, const QuantFormat& format, const std::string& what) {
  if (weight.dim() != 2 || !at::isFloatingType(weight.scalar_type())) {
    throw Error(ErrorKind::InvalidArgument, what + ": quantise a 2-D floating-point matrix");
  }
  format.check(what);
  torch::NoGradGuard no_grad;
  const int64_t rows = weight.size(0);
  auto w = weight.to(torch::kCPU, torch::kFloat32);
  if (format.padded(weight.size(1)) != weight.size(1)) {
    w = torch::constant_pad_nd(w, {0, format.padded(weight.size(1)) - weight.size(1)});  // zero columns
  }
  w = w.contiguous();
  const int64_t cols = w.size(1);
  if (!torch::isfinite(w).all().item<bool>()) {
    throw Error(ErrorKind::Format, what + ": holds a non-finite value (NaN or infinity); it cannot be quantised");
  }
  auto out = torch::empty({rows, format.row_bytes(cols)}, torch::kUInt8);
  const float* src = w.data_ptr<float>();
  uint8_t* dst = out.data_ptr<uint8_t>();
  const bool int4 = format.format == WeightFormat::Int4;
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      uint8_t* p = dst + i * format.row_bytes(cols);
      for (int64_t g = 0; g < cols / format.group; ++g) {
        const float* v = src + i * cols + g * format.group;
        // int8: d = max|w| / 127. int4 (Q4_0's rule): the value of largest magnitude maps to -8 exactly.
        float extreme = 0.f;
        for (int64_t j = 0; j < format.group; ++j) {
          if (std::fabs(v[j]) > std::fabs(extreme)) extreme = v[j];
        }
        const float d_exact = int4 ? extreme / -8.f : std::fabs(extreme) / 127.f;
        const c10::Half d_half(d_exact);
        const float d = static_cast<float>(d_half);
        if (!std::isfinite(d)) {
          throw Error(ErrorKind::Format, what + ": row " + std::to_string(i) + " holds " + std::to_string(extreme) +
                                             ", too large for a float16 block scale");
        }
        const float inv = d != 0.f ? 1.f / d : 0.f;
        const uint16_t bits = d_half.x;
        std::memcpy(p, &bits, 2);
        p += 2;
        if (!int4) {
          for (int64_t j = 0; j < format.group; ++j) {
            const float q = std::clamp(std::nearbyint(v[j] * inv), -127.f, 127.f);
            p[j] = static_cast<uint8_t>(static_cast<int8_t>(q));
          }
          p += format.group;
          continue;
        }
        for (int64_t s = 0; s < format.group; s += 32, p += 16) {
          for (int j = 0; j < 16; ++j) {
            const auto lo = static_cast<int>(std::clamp(std::nearbyint(v[s + j] * inv), -8.f, 7.f)) + 8;
            const auto hi = static_cast<int>(std::clamp(std::nearbyint(v[s + j + 16] * inv), -8.f, 7.f)) + 8;
            p[j] = static_cast<uint8_t>(lo | (hi << 4));
          }
        }
      }
    }
  });
  return out;
}

torch::Tensor dequantize_rows(const torch::Tensor& blocks, const QuantFormat& format, int64_t true_cols) {
  format.check("dequantize");
  if (true_cols <= 0 || blocks.dim() != 2 || blocks.scalar_type() != torch::kUInt8 ||
      blocks.size(1) != format.row_bytes(true_cols)) {
    throw Error(ErrorKind::InvalidArgument, "dequantize: expected [rows, " + std::to_string(format.row_bytes(true_cols)) +
                                                "] uint8 blocks");
  }
  const int64_t cols = format.padded(true_cols);
  const auto q = blocks.to(torch::kCPU).contiguous();
  const int64_t rows = q.size(0);
  auto out = torch::empty({rows, cols}, torch::kFloat32);
  const uint8_t* src = q.data_ptr<uint8_t>();
  float* dst = out.data_ptr<float>();
  const bool int4 = format.format == WeightFormat::Int4;
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const uint8_t* p = src + i * format.row_bytes(cols);
      float* row = dst + i * cols;
      for (int64_t g = 0; g < cols / format.group; ++g) {
        uint16_t bits;
        std::memcpy(&bits, p, 2);
        const float d = static_cast<float>(c10::Half(bits, c10::Half::from_bits()));
        p += 2;
        float* v = row + g * format.group;
        if (!int4) {
          for (int64_t j = 0; j < format.group; ++j) v[j] = d * static_cast<float>(static_cast<int8_t>(p[j]));
          p += format.group;
          continue;
        }
        for (int64_t s = 0; s < format.group; s += 32, p += 16) {
          for (int j = 0; j < 16; ++j) {
            v[s + j] = d * static_cast<float>((p[j] & 0x0F) - 8);
            v[s + j + 16] = d * static_cast<float>((p[j] >> 4) - 8);
          }
        }
      }
    }
  });
  return cols == true_cols ? out : out.narrow(1, 0, true_cols).contiguous();
}

namespace {

// x [..., k] as a contiguous float32 [m, k] and the shape of the product [..., n].
std::pair<torch::Tensor, std::vector<int64_t>> rows_of(const torch::Tensor& x, int64_t n) {
  auto shape = x.sizes().vec();
  shape.back() = n;
  return {x.reshape({-1, x.size(-1)}).to(torch::kFloat32).contiguous(), shape};
}

// Runs `kernel(x, rows, y)` over the m rows of x [m, k] kDecodeRows at a time, into y [m, n].
template <typename Kernel>
void in_chunks(const torch::Tensor& x, torch::Tensor& y, const Kernel& kernel) {
  const int64_t m = x.size(0), k = x.size(1), n = y.size(1);
  for (int64_t r = 0; r < m; r += kDecodeRows) {
    kernel(x.data_ptr<float>() + r * k, std::min(kDecodeRows, m - r), y.data_ptr<float>() + r * n);
  }
}

// An uninitialised byte buffer in anonymous memory that the kernel may back with 2 MiB pages
// (MADV_HUGEPAGE; 4 KiB pages where transparent huge pages are off). The panels are read front to back
// once per token: with 4 KiB pages every 4 KiB of a stream costs a TLB miss, and bench/llm_decode_7b.py's 7B
// int4 model decoded at 139 ms/token against 97 with huge pages (medians of 4 alternating runs, 2 Zen 4 cores).
torch::Tensor huge_page_buffer(int64_t bytes) {
  constexpr size_t kHuge = size_t{2} << 20;
  const size_t size = (static_cast<size_t>(bytes) + kHuge - 1) / kHuge * kHuge;
  void* raw = ::mmap(nullptr, size + kHuge, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == MAP_FAILED) {
    throw Error(ErrorKind::Io,
                "quantised linear layer: cannot map " + std::to_string(bytes) + " bytes for its panels");
  }
  const auto base = reinterpret_cast<uintptr_t>(raw);
  auto* data = reinterpret_cast<void*>((base + kHuge - 1) / kHuge * kHuge);
#ifdef MADV_HUGEPAGE
  ::madvise(data, size, MADV_HUGEPAGE);  // advice only: without it the buffer has ordinary pages
#endif
  return torch::from_blob(data, {bytes}, [raw, size](void*) { ::munmap(raw, size + kHuge); },
                          torch::TensorOptions().dtype(torch::kUInt8));
}

}  // namespace

int64_t kernel_prompt_rows() {
  // Where the CPU has bf16 dot products (AVX-512 BF16), libtorch's bf16 product is faster than the kernels
  // for more than a decoding step's rows (256 against 164 GFLOPS at 32 rows, bench/cpu_kernels).
  return kernels::best_isa() == kernels::Isa::Avx512 ? kDecodeRows : kKernelPromptRows;
}

torch::Tensor decode_linear(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias) {
  const int64_t k = x.size(-1);
  const int64_t m = k > 0 ? x.numel() / k : 0;
  if (!x.is_cpu() || !weight.is_cpu() || torch::GradMode::is_enabled() || weight.scalar_type() != torch::kBFloat16 ||
      !weight.is_contiguous() || weight.dim() != 2 || weight.size(1) != k || m == 0 || m > kernel_prompt_rows() ||
      (x.scalar_type() != torch::kBFloat16 && x.scalar_type() != torch::kFloat32)) {
    return nn::linear(x, weight, bias);  // a prompt in bf16 runs in float32 where the CPU lacks bf16 products
  }
  const int64_t n = weight.size(0);
  auto [rows, shape] = rows_of(x, n);
  auto y = torch::empty({m, n}, torch::kFloat32);
  const auto* w = reinterpret_cast<const uint16_t*>(weight.data_ptr());
  kernels::matmul_bf16(w, n, k, rows.data_ptr<float>(), m, y.data_ptr<float>(), kernels::best_isa());
  // Rounded once to the activations' dtype, as libtorch's bf16 product rounds its float accumulator.
  auto out = y.to(x.scalar_type());
  if (bias.defined()) out = out + bias;
  return out.view(shape);
}

QuantLinearImpl::QuantLinearImpl(int64_t in_features, int64_t out_features, bool bias, QuantFormat format)
    : in_(in_features), out_(out_features), has_bias_(bias), format_(format) {
  reset();
}

torch::Tensor QuantLinearImpl::panels() {
  const int64_t k = format_.padded(in_);
  if (!qweight.is_cpu() || !kernels::panels_apply(format_, out_, k, kernels::best_isa())) return {};
  std::lock_guard<std::mutex> lock(*panels_mutex_);
  const auto w = qweight.contiguous();
  if (panels_.defined() && panels_of_ == w.data_ptr()) return panels_;
  panels_ = huge_page_buffer(kernels::panels_bytes(format_, out_, k));
  kernels::pack_panels(w.data_ptr<uint8_t>(), format_, out_, k, panels_.data_ptr<uint8_t>());
  panels_of_ = w.data_ptr();
#ifdef MADV_PAGEOUT
  // Reclaim, not discard: file pages are read again, anonymous ones kept (or swapped).
  const auto page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const auto begin = (reinterpret_cast<uintptr_t>(w.data_ptr()) + page - 1) / page * page;
  const auto end = (reinterpret_cast<uintptr_t>(w.data_ptr()) + static_cast<uintptr_t>(w.nbytes())) / page * page;
  if (end > begin) ::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_PAGEOUT);
#endif
  return panels_;
}

void QuantLinearImpl::reset() {
  panels_mutex_ = std::make_shared<std::mutex>();
  panels_ = torch::Tensor();
  panels_of_ = nullptr;
  format_.check("quantised linear layer");
  if (in_ <= 0) throw Error(ErrorKind::InvalidArgument, "quantised linear layer: " + std::to_string(in_) + " inputs");
  if (out_ <= 0) throw Error(ErrorKind::InvalidArgument, "quantised linear layer: " + std::to_string(out_) + " outputs");
  // Empty until loaded: the checkpoint's blocks replace it (and are used in place when mapped).
  qweight = register_buffer("qweight", torch::empty({out_, format_.row_bytes(in_)}, torch::kUInt8));
  bias = has_bias_ ? register_buffer("bias", torch::empty({out_}, torch::kFloat32)) : torch::Tensor();
}

torch::Tensor QuantLinearImpl::forward(const torch::Tensor& x) {
  if (!x.is_cpu() || !qweight.is_cpu()) {
    throw Error(ErrorKind::Unsupported, "int8/int4 weights run on the CPU only");
  }
  if (x.size(-1) != in_) {
    throw Error(ErrorKind::InvalidArgument, "quantised linear layer: input width " + std::to_string(x.size(-1)) +
                                                ", expected " + std::to_string(in_));
  }
  const auto dtype = x.scalar_type();
  const int64_t m = x.numel() / in_;
  torch::Tensor out;
  if (m <= kKernelPromptRows) {
    auto [rows, shape] = rows_of(x, out_);
    const int64_t k = format_.padded(in_);
    if (k != in_) rows = torch::constant_pad_nd(rows, {0, k - in_}).contiguous();  // the weights' zero columns
    auto y = torch::empty({m, out_}, torch::kFloat32);
    const auto w = qweight.contiguous();
    const auto packed = panels();
    in_chunks(rows, y, [&](const float* xr, int64_t mr, float* yr) {
      if (packed.defined()) {
        kernels::matmul_panels(packed.data_ptr<uint8_t>(), format_, out_, k, xr, mr, yr, kernels::best_isa());
      } else {
        kernels::matmul_quant(w.data_ptr<uint8_t>(), format_, out_, k, xr, mr, yr, kernels::best_isa());
      }
    });
    out = y.view(shape);
  } else {
    // A long prompt: the matrix product is compute-bound, so the weights are expanded once for libtorch's.
    out = torch::matmul(x.to(torch::kFloat32), dequantize_rows(qweight, format_, in_).t());
  }
  out = out.to(dtype);
  if (bias.defined()) out = out + bias.to(dtype);
  return out;
}

}  // namespace lego::llm
