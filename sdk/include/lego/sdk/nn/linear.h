// Linear and Embedding layers whose parameters start uninitialised (DESIGN.md, sdk/nn).
//
// Checkpoint loading replaces every parameter, so allocating and randomly initialising a 7B model first
// would waste tens of gigabytes and seconds: `torch::empty` costs nothing until touched. Fresh models
// (`lego init-model`, new adapters in training) call `init_normal` explicitly. Names of the parameters match
// torch::nn ("weight", "bias"), so state dicts look the same.
#pragma once

#include <torch/nn/cloneable.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/normalization.h>
#include <torch/nn/pimpl.h>

#include <cstdint>
#include <memory>
#include <string>

namespace lego::nn {

struct LinearOptions {
  LinearOptions(int64_t in_features, int64_t out_features) : in_features_(in_features), out_features_(out_features) {}
  TORCH_ARG(int64_t, in_features);
  TORCH_ARG(int64_t, out_features);
  TORCH_ARG(bool, bias) = true;
};

class LinearImpl : public torch::nn::Cloneable<LinearImpl> {
 public:
  explicit LinearImpl(const LinearOptions& options);
  void reset() override;
  torch::Tensor forward(const torch::Tensor& x);

  LinearOptions options;
  torch::Tensor weight;  // [out, in]
  torch::Tensor bias;    // [out] or undefined
};
TORCH_MODULE(Linear);

struct EmbeddingOptions {
  EmbeddingOptions(int64_t num_embeddings, int64_t embedding_dim)
      : num_embeddings_(num_embeddings), embedding_dim_(embedding_dim) {}
  TORCH_ARG(int64_t, num_embeddings);
  TORCH_ARG(int64_t, embedding_dim);
};

class EmbeddingImpl : public torch::nn::Cloneable<EmbeddingImpl> {
 public:
  explicit EmbeddingImpl(const EmbeddingOptions& options);
  void reset() override;
  // ids of any shape -> [..., embedding_dim]; ids outside the table throw lego::Error.
  torch::Tensor forward(const torch::Tensor& ids);

  EmbeddingOptions options;
  torch::Tensor weight;  // [num_embeddings, embedding_dim]
};
TORCH_MODULE(Embedding);

// An uninitialised float32 parameter of `sizes`, after checking that every size is positive and that the
// tensor fits in this machine's memory (a size from a config must not reach the allocator unchecked: this
// libtorch aborts on a failed allocation). `what` names the layer in the message.
torch::Tensor uninitialised(at::IntArrayRef sizes, const std::string& what);
// The checks of `uninitialised` alone, for layers that torch allocates (and initialises) itself.
void check_sizes(at::IntArrayRef sizes, const std::string& what);

// Half-precision products on a CPU without native bf16/fp16 dot products (no AVX512-BF16 or AVX512-FP16):
// libtorch runs them there far slower than in float32 (measured on an AVX2 EPYC, 2 threads: a
// [577, 1024] x [1024, 4096] bf16 product at 15.6 GFLOPS against 106 in float32, a 14x14 patch convolution
// 33 times slower). `linear` and `conv2d` compute such products (more than 8 rows, or any that autograd
// records) in float32 from up-cast copies and round the result once to the input's dtype, which is what
// libtorch's half-precision product does with its float accumulator; under autograd the gradients are
// computed the same way and rounded once to each tensor's dtype, and `linear` saves only the
// half-precision tensors for the backward pass. Anything else goes to libtorch as it is.
// LEGO_CPU_HALF=native keeps libtorch's half-precision path everywhere.
bool half_product_in_float(const torch::Tensor& x, const torch::Tensor& weight);
// Whether LEGO_CPU_HALF=native asks for libtorch's half-precision CPU kernels everywhere.
bool cpu_half_forced_native();
// y = x W^T + b, as torch::nn::functional::linear.
torch::Tensor linear(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias);
// conv(x), as conv->forward(x) (zero padding only).
torch::Tensor conv2d(const torch::nn::Conv2d& conv, const torch::Tensor& x);

// LayerNorm over the last dimension of `width` (weight 1, bias 0).
torch::nn::LayerNorm make_layer_norm(int64_t width, double eps);

// Fresh weights for every parameter of `module`, from a generator seeded with `seed`: biases 0, 1-D
// `weight`s (normalisation scales) 1, everything else N(0, std) (the BERT/LLaMA initialisation, std 0.02).
void init_normal(torch::nn::Module& module, double std, uint64_t seed);
// The same, with each tensor's std gain / sqrt(fan_in): fan_in is a matrix's or embedding table's last
// dimension (its input width), a convolution kernel's input channels times its window. 0.02 suits models
// thousands of units wide; models a few hundred wide train much faster from this.
void init_fan_in(torch::nn::Module& module, double gain, uint64_t seed);

// The same draws one parameter at a time, for a model too large to hold (init-model streams a 7B model to
// disk): next() returns, as float32, the value the parameter named `name` (its last component decides, as
// above) of shape `sizes` gets when parameters are drawn in this order. Drawing a module's parameters in
// named_parameters() order gives exactly what init_normal / init_fan_in give that module.
class ParameterInit {
 public:
  enum class Scheme { Normal, FanIn };
  // `scale` is the std (Normal) or the gain (FanIn).
  ParameterInit(Scheme scheme, double scale, uint64_t seed);
  ~ParameterInit();
  ParameterInit(const ParameterInit&) = delete;
  ParameterInit& operator=(const ParameterInit&) = delete;

  torch::Tensor next(const std::string& name, at::IntArrayRef sizes);

 private:
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace lego::nn
