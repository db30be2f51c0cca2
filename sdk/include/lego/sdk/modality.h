// Modality: what one plugin contributes to a LEGO model (DESIGN.md, "Plugin ABI", version 3).
//
// A modality owns everything particular to one kind of media: reading a file into preprocessed tensors
// (load: CPU, thread-safe, randomness only from the seed it is given), batching media whose sizes may
// differ (collate), turning a batch into LLM input embeddings (encode, [B, tokens, d_llm], with autograd
// left to the caller), a train/eval switch, mapping the boxes and spans of an answer back onto its media,
// what the import of a released checkpoint needs from it, and drawing an answer onto a medium. Its
// architecture comes from its own section of model.ini, its weights from the model directory through a
// TensorSource. Core composes modalities by their placeholder (`<image>`, ...) and never sees their types
// or their media's metadata.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <torch/nn/module.h>

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "lego/sdk/config.h"
#include "lego/sdk/synth.h"
#include "lego/sdk/weights.h"

namespace lego {

namespace detail {
template <typename T>
class GuardedModality;
}

// What a modality is made from: its section of model.ini (read-only) and the LLM width it projects to.
struct ModalityConfig {
  config::ConfigSection section;
  int64_t llm_hidden_size = 0;
  std::filesystem::path model_dir;  // for files the section names (relative paths)
};

// One weight a modality needs: its full name in the model directory and its shape.
struct WeightSpec {
  std::string name;
  std::vector<int64_t> shape;
};

// A plugin's own facts about one loaded medium (original size, duration, bounds, ...). Core only carries
// it back to the plugin that made it; a plugin derives from it and casts back in its own code.
struct MediaMeta {
  virtual ~MediaMeta() = default;
};

// A loaded media file.
struct Media {
  std::filesystem::path path;
  at::Tensor tensor;                       // preprocessed, CPU; its shape is the plugin's and may differ per file
  std::shared_ptr<const MediaMeta> meta;   // plugin-defined; may be null
};

// Several media of one modality made into one input of encode(). `tensors` is plugin-defined: stacked
// inputs, padding masks, lengths, ...
struct MediaBatch {
  int64_t size = 0;
  std::map<std::string, at::Tensor> tensors;
  // The tensor called `name`; throws InvalidArgument naming it when absent.
  const at::Tensor& at(const std::string& name) const;
};

// What grounding a modality's answers carry: boxes of `box_values` numbers (4: [x1, y1, x2, y2]; 6: a
// 3-D box [x1, y1, z1, x2, y2, z2]; 0: none) and/or time spans {t1, t2}.
struct GroundingKinds {
  int box_values = 0;
  bool spans = false;
};

// Where a box of the answer lands on one medium.
struct MappedBox {
  std::vector<double> relative;  // on the original medium, each value in [0, 1]
  std::vector<double> absolute;  // in the medium's own unit
  std::string unit;              // "px", "m", ...
};

// Where a span of the answer lands: seconds from the start of the medium.
struct MappedSpan {
  double start_s = 0;
  double end_s = 0;
};

// A grounded phrase of an answer as drawn by render(): the box or span already mapped onto the medium.
struct GroundedPhrase {
  std::string phrase;
  std::optional<MappedBox> box;
  std::optional<MappedSpan> span;
};

// An extra input a checkpoint's import needs beside the checkpoint (the released image branch keeps its
// CLIP tower in a separate directory): the CLI offers it as `--NAME DIR`.
struct ImportInput {
  std::string name;
  std::string help;
};

// What import hands a modality: the checkpoint and the extra inputs given.
struct ImportContext {
  const TensorSource* checkpoint = nullptr;
  std::filesystem::path checkpoint_dir;  // config.json and friends
  std::map<std::string, std::filesystem::path> inputs;
};

// How a modality's branch of a checkpoint becomes a model directory's section and tensors.
struct ImportPlan {
  std::map<std::string, std::string> section;  // model.ini keys of this modality
  // Weights whose names start with `prefix` come from `input` ("" = the checkpoint), named there with
  // `prefix` replaced by `source_prefix`. Weights no rule covers come from the checkpoint by their name.
  struct Rule {
    std::string prefix;
    std::string input;
    std::string source_prefix;
  };
  std::vector<Rule> rules;
  // Checkpoint tensors under these prefixes belong to the branch but are not used (listed as skipped).
  std::vector<std::string> unused_prefixes;
  // Checkpoint buffers the modules derive themselves (a BERT's position_ids), skipped by exact name.
  std::vector<std::string> derived_buffers;
};

class Modality {
 public:
  virtual ~Modality() = default;

  // The name the plugin's descriptor gives (LEGO_PLUGIN), set when the modality is made.
  const std::string& name() const { return name_; }
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
  // The parameters, for init-model (random weights) and training: frozen encoder, trainable adapter.
  virtual std::vector<std::pair<std::string, at::Tensor>> encoder_parameters() = 0;
  virtual std::vector<std::pair<std::string, at::Tensor>> adapter_parameters() = 0;
  // Training mode (true) or evaluation mode (false) of the trainable parts; the frozen encoder always
  // computes in evaluation mode. Modalities start in evaluation mode.
  virtual void train(bool on) { training_ = on; }
  bool is_training() const { return training_; }
  // Whether encode() lets gradients reach the encoder too. Encoders are frozen in every released stage;
  // a stage that trains one from scratch (the demo's stage 0, whose tiny encoders have no pretrained
  // weights) turns this on. Off by default.
  virtual void set_encoder_trainable(bool on) { encoder_trainable_ = on; }
  bool encoder_trainable() const { return encoder_trainable_; }

  // Reads and preprocesses one file; thread-safe; CPU only. Any randomness (training augmentation) draws
  // from `seed` alone, so the same file and seed give the same tensors. Bad media throw lego::Error
  // naming the file.
  virtual Media load(const std::filesystem::path& file, uint64_t seed) const = 0;
  // Makes one batch of media (sizes may differ). By default stacks each Media::tensor as "input", which
  // needs equal shapes.
  virtual MediaBatch collate(const std::vector<Media>& media) const;
  // A batch -> [B, tokens(), llm_hidden_size] on the weights' device and dtype. Gradients flow to the
  // trainable parameters when the caller's grad mode is on; the encoder records none unless
  // set_encoder_trainable(true).
  virtual at::Tensor encode(const MediaBatch& batch) = 0;
  // What encode() is made of, for `lego encode`: the encoder's output before the adapter.
  virtual at::Tensor encode_features(const MediaBatch& batch) = 0;

  // The grounding this modality's answers carry; none by default.
  virtual GroundingKinds grounding() const { return {}; }
  // A box of the answer, as written (grounding().box_values numbers in [0, 1]), onto `media`.
  virtual MappedBox map_box(const Media& media, const std::vector<double>& box) const;
  // A span of the answer, as written (relative to the duration), onto `media`.
  virtual MappedSpan map_span(const Media& media, double t1, double t2) const;
  // Draws `phrases` onto `media` and writes an image to `out`; false when this modality cannot draw.
  virtual bool render(const Media& media, const std::vector<GroundedPhrase>& phrases,
                      const std::filesystem::path& out) const;

  // Renders a SynthGround scene into a file of this modality at `stem` plus its own extension, and says
  // what the file grounds (see lego/sdk/synth.h); nothing when this modality does not synthesize.
  virtual std::optional<synth::Rendered> synthesize(const synth::Scene& /*scene*/,
                                                    const std::filesystem::path& /*stem*/) const {
    return std::nullopt;
  }

  // Extra inputs the import of a released checkpoint needs for this branch.
  virtual std::vector<ImportInput> import_inputs() const { return {}; }
  // The plan to import this branch from `context`, or nothing when the checkpoint has no such branch.
  virtual std::optional<ImportPlan> plan_import(const ImportContext& context) const;

 private:
  template <typename T>
  friend class detail::GuardedModality;
  std::string name_;
  bool training_ = false;
  bool encoder_trainable_ = false;
};

// The common shape of a modality: a frozen encoder module and a trainable adapter module, each stored
// under a name prefix. load_weights, the parameter lists and train() follow from the two.
class EncoderAdapterModality : public Modality {
 public:
  void load_weights(const TensorSource& source, at::ScalarType dtype, c10::Device device) override;
  std::vector<std::pair<std::string, at::Tensor>> encoder_parameters() override;
  std::vector<std::pair<std::string, at::Tensor>> adapter_parameters() override;
  void train(bool on) override;

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
