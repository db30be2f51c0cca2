// Weight-only quantisation (int8, int4) and the CPU matrix products of decoding (docs/formats.md,
// "Quantised weights").
//
// A quantised matrix [rows, cols] is stored row by row in blocks of `group` columns; each block is its
// float16 scale (2 bytes, little-endian) followed by its values:
//   int8: `group` signed bytes, w = scale * q, q in [-127, 127];
//   int4: `group / 2` bytes in sub-blocks of 32 columns, 16 bytes each: byte j of sub-block s holds
//         column 32 s + j in its low nibble and column 32 s + j + 16 in its high nibble, as q + 8 with
//         q in [-8, 7].
// One [rows, ceil(cols / group) * block bytes] uint8 tensor holds a matrix (a last partial group is padded
// with zero columns), so a mapped file is used in place.
//
// The matrix products here serve batch-1 (and small-batch) decoding on the CPU, where reading the weights
// from memory is the whole cost: bf16 and quantised weights are expanded in registers (AVX2/FMA/F16C,
// chosen at run time; portable C++ otherwise) and the rows are shared among libtorch's intra-op threads.
// Quantised products round the activations to int8 per 32 columns (as llama.cpp's Q8_0 does) and sum
// exact integer products.
#pragma once

#include <torch/nn/cloneable.h>
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>

namespace lego::llm {

enum class WeightFormat { Dense, Int8, Int4 };

struct QuantFormat {
  WeightFormat format = WeightFormat::Int8;
  int64_t group = 32;  // columns per scale: 32, 64 or 128

  int64_t bits() const { return format == WeightFormat::Int4 ? 4 : 8; }
  // Bytes of one block (scale and values).
  int64_t block_bytes() const { return 2 + (format == WeightFormat::Int4 ? group / 2 : group); }
  // `cols` rounded up to whole groups: a matrix whose width is not a multiple of the group is stored with
  // zero columns appended.
  int64_t padded(int64_t cols) const { return (cols + group - 1) / group * group; }
  // Bytes of one stored row of `cols` columns.
  int64_t row_bytes(int64_t cols) const { return padded(cols) / group * block_bytes(); }
  // Throws lego::Error(InvalidArgument) for a dense format or a group other than 32, 64, 128; `what`
  // names the matrix or flag.
  void check(const std::string& what = "") const;
};

// "int8", "int4" -> format; anything else throws lego::Error(InvalidArgument) naming `flag`.
WeightFormat parse_weight_format(const std::string& name, const std::string& flag);
std::string weight_format_name(WeightFormat format);  // "dense", "int8", "int4"

// Quantises `weight` [rows, cols] (any floating dtype, CPU) into the block layout above. Non-finite
// weights throw lego::Error(Format) naming `what`.
torch::Tensor quantize_rows(const torch::Tensor& weight, const QuantFormat& format, const std::string& what = "weight");
// The float32 matrix [rows, cols] that `blocks` encodes.
torch::Tensor dequantize_rows(const torch::Tensor& blocks, const QuantFormat& format, int64_t cols);

namespace kernels {

// Ordered: each runs wherever a later one does.
enum class Isa { Portable, Avx2, Avx512 };
// The best this CPU runs: AVX2 needs AVX2, FMA and F16C; AVX-512 needs AVX-512 F/BW/VL with VNNI (int8 dot
// products) and BF16 (bf16 dot products). LEGO_CPU_KERNELS=portable or =avx2 caps it.
Isa best_isa();
const char* isa_name(Isa isa);  // "portable", "avx2", "avx512"

// y [m, n] = x [m, k] · w [n, k]^T, float32 out, for row-major contiguous buffers, any m; rows of w are
// shared among the intra-op threads. The AVX2 path takes `k` in multiples of 16 and the AVX-512 one in
// multiples of 32 (others fall back to the next). On AVX2, 16 or more rows of x with n a multiple of 8 are
// multiplied against float32 panels of 16 weight rows, so each weight is read once for all the rows; fewer
// rows take dot-product tiles of 1-2 rows. The AVX-512 path multiplies the activations as two bf16 parts
// (x = hi + lo, each rounded to bf16), so its products keep about 16 bits of each activation; with one row
// of x (a decoding step) it reads w one row after another, without software prefetch.
void matmul_bf16(const uint16_t* w, int64_t n, int64_t k, const float* x, int64_t m, float* y, Isa isa);
// The same over a quantised w in the block layout above; `k` must be a multiple of the group (the caller
// pads x with zero columns as the weights were padded).
void matmul_quant(const uint8_t* w, const QuantFormat& format, int64_t n, int64_t k, const float* x, int64_t m,
                  float* y, Isa isa);

// Quantised weights in panels of 8 rows interleaved (cpu_kernels.cpp describes the layout): on AVX2 and
// AVX-512 CPUs, where the row layout's per-row bookkeeping costs more than its memory traffic (on Zen 4 the
// AVX2 panels outrun VNNI's dot over rows too), a QuantLinear keeps its matrix in this form too
// (bench/cpu_kernels has both layouts). panels_apply says whether `isa` uses it for an
// [n, k] matrix of `format`; panels_bytes is its size; pack_panels writes it from the block layout (throws
// lego::Error(InvalidArgument) for a shape it does not take); matmul_panels is matmul_quant over it (AVX2
// on both, or portable C++ for the same layout).
bool panels_apply(const QuantFormat& format, int64_t n, int64_t k, Isa isa);
int64_t panels_bytes(const QuantFormat& format, int64_t n, int64_t k);
void pack_panels(const uint8_t* w, const QuantFormat& format, int64_t n, int64_t k, uint8_t* out);
void matmul_panels(const uint8_t* packed, const QuantFormat& format, int64_t n, int64_t k, const float* x, int64_t m,
                   float* y, Isa isa);

}  // namespace kernels

// The quantised kernels take at most kDecodeRows rows of activations at once (a decoding step); a prompt of
// up to kKernelPromptRows rows goes through them kDecodeRows at a time. The bf16 kernel takes a prompt's
// rows in one call (matmul_bf16). On 2 AVX2 cores at the 1.1B shape and 32 rows that runs at about 100
// GFLOPS for bf16 and 180 for int8/int4 panels, against 19 for libtorch's bf16 product (bench/cpu_kernels
// --rows 32). Longer prompts go to libtorch's (float32) matrix product.
constexpr int64_t kDecodeRows = 8;
constexpr int64_t kKernelPromptRows = 256;

// The most rows of bf16 activations decode_linear gives the kernel: kKernelPromptRows, or kDecodeRows on a
// CPU with AVX-512 BF16, whose libtorch bf16 product is the faster one beyond a decoding step.
int64_t kernel_prompt_rows();

// x [..., k] · weight^T (+ bias) for inference outside autograd: the bf16 kernel for a bf16 weight on the
// CPU with at most kernel_prompt_rows() rows; lego::nn::linear otherwise. The result has x's dtype.
torch::Tensor decode_linear(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias);

// A linear layer over quantised weights, for inference: state dict names `qweight` ([out, row bytes]
// uint8) and, when it has one, `bias` ([out], the model's dtype). Runs on the CPU only.
class QuantLinearImpl : public torch::nn::Cloneable<QuantLinearImpl> {
 public:
  QuantLinearImpl(int64_t in_features, int64_t out_features, bool bias, QuantFormat format);
  void reset() override;
  // x [..., in] (float32 or bf16) -> [..., out] in x's dtype. Up to kKernelPromptRows rows run the
  // quantised kernel; more rows dequantise the matrix once per call and use libtorch's product.
  torch::Tensor forward(const torch::Tensor& x);

  int64_t in_features() const { return in_; }
  int64_t out_features() const { return out_; }
  const QuantFormat& format() const { return format_; }

  torch::Tensor qweight;  // [out, row bytes] uint8
  torch::Tensor bias;     // [out] or undefined

  // qweight as panels where this CPU's kernels use them (kernels::panels_apply), in anonymous memory
  // advised for 2 MiB pages (MADV_HUGEPAGE: a stream read once per token misses the TLB every 4 KiB
  // otherwise), made on first use (LanguageModel::load asks at load) and again when qweight is replaced
  // (not when it is written in place); undefined elsewhere. Once they are made, the pages of a mapped
  // qweight are handed back to the kernel (MADV_PAGEOUT: read again from the file if a long prompt
  // dequantises it), so the resident size stays one copy.
  torch::Tensor panels();

 private:
  int64_t in_, out_;
  bool has_bias_;
  QuantFormat format_;
  std::shared_ptr<std::mutex> panels_mutex_;
  torch::Tensor panels_;
  const void* panels_of_ = nullptr;  // the qweight data they were made from
};
TORCH_MODULE(QuantLinear);

}  // namespace lego::llm
