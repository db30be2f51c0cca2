// Modality: what one plugin contributes to a LEGO model (DESIGN.md, "Plugin ABI").
//
// A modality reads one kind of media file into preprocessed tensors (load, CPU, thread-safe) and turns a
// batch of them into LLM input embeddings (encode, [B, tokens, d_llm]). Its architecture comes from its
// own section of model.ini; its weights, under the released checkpoint's names, come from the model
// directory through a TensorSource. The core composes modalities by their placeholder (`<image>`, ...)
// and never sees their types.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <torch/nn/module.h>

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "lego/sdk/weights.h"

namespace lego {

// A modality's section of model.ini ("key" -> "value", without the section name), plus the LLM width it
// must project to.
struct ModalityConfig {
  std::map<std::string, std::string> options;
  int64_t llm_hidden_size = 0;
  std::filesystem::path model_dir;  // for files the section names (relative paths)

  std::string get(const std::string& key) const;  // throws NotFound naming the section key
  std::string get(const std::string& key, const std::string& fallback) const;
  int64_t get_int(const std::string& key) const;
  int64_t get_int(const std::string& key, int64_t fallback) const;
  double get_double(const std::string& key, double fallback) const;
  bool get_bool(const std::string& key, bool fallback) const;
};

// One weight a modality needs: its full name in the model directory and its shape.
struct WeightSpec {
  std::string name;
  std::vector<int64_t> shape;
};

// A loaded media file: the preprocessed tensor and what grounding needs to map answers back onto the
// original (pixel size, duration).
struct Media {
  at::Tensor tensor;        // preprocessed, CPU; what encode() takes, stacked over a batch
  int64_t width = 0;        // original pixels (images, videos); 0 when not applicable
  int64_t height = 0;
  double duration_s = 0.0;  // seconds (videos, sounds); 0 when not applicable
  std::filesystem::path path;
};

class Modality {
 public:
  virtual ~Modality() = default;

  virtual std::string name() const = 0;         // "image"
  virtual std::string placeholder() const = 0;  // "<image>"
  // Special tokens framing the features in the prompt: {start, patch, end}, e.g. <im_start> <im_patch> <im_end>.
  virtual std::vector<std::string> frame_tokens() const = 0;
  virtual int64_t tokens() const = 0;  // LLM tokens per medium (576 for the image branch)
  virtual std::vector<std::string> file_types() const = 0;  // lower-case extensions without the dot

  // Every weight, with its shape: what import and init-model write and the loader checks. By default the
  // encoder's and the adapter's parameters.
  virtual std::vector<WeightSpec> weights() const;
  // Fills the weights from `source`, converted to `dtype` and moved to `device`.
  virtual void load_weights(const TensorSource& source, at::ScalarType dtype, c10::Device device) = 0;
  // The modules, for init-model (random weights) and training: frozen encoder, trainable adapter.
  virtual std::vector<std::pair<std::string, at::Tensor>> encoder_parameters() = 0;
  virtual std::vector<std::pair<std::string, at::Tensor>> adapter_parameters() = 0;

  // Reads and preprocesses one file; thread-safe; CPU only. Bad media throw lego::Error naming the file.
  virtual Media load(const std::filesystem::path& file) const = 0;
  // [B, ...] stacked Media::tensor -> [B, tokens(), llm_hidden_size], on the weights' device and dtype.
  virtual at::Tensor encode(const at::Tensor& batch) = 0;
  // What encode() is made of, for `lego encode`: the encoder's output before the adapter.
  virtual at::Tensor encode_features(const at::Tensor& batch) = 0;
};

// The common shape of a modality: a frozen encoder module and a trainable adapter module, each stored
// under a name prefix. load_weights, encoder_parameters and adapter_parameters follow from the two.
class EncoderAdapterModality : public Modality {
 public:
  void load_weights(const TensorSource& source, at::ScalarType dtype, c10::Device device) override;
  std::vector<std::pair<std::string, at::Tensor>> encoder_parameters() override;
  std::vector<std::pair<std::string, at::Tensor>> adapter_parameters() override;

 protected:
  // Called by the constructor of the derived modality once both modules exist; puts them in eval mode.
  void set_parts(std::shared_ptr<torch::nn::Module> encoder, std::string encoder_prefix,
                 std::shared_ptr<torch::nn::Module> adapter, std::string adapter_prefix);
  // The device and dtype the weights were loaded to (of the adapter's first parameter).
  at::TensorOptions weight_options();

 private:
  std::shared_ptr<torch::nn::Module> encoder_, adapter_;
  std::string encoder_prefix_, adapter_prefix_;
};

}  // namespace lego
