// The image modality (`<image>`, 576 tokens at 336 px): CLIP ViT-L/14, hidden state of layer -2 without
// the CLS token, then the MLP2x-GELU projector (shared/reference/lego-original.md section 2).
//
// model.ini [image]: plugin = image; image_size, patch_size, width, layers, heads, mlp_dim,
// layer_norm_eps (CLIP's sizes); feature_layer (-2); projector (mlp2x_gelu); pad_to_square (true).
#include <ATen/ATen.h>

#include "lego/sdk/abi.h"
#include "lego/sdk/image/clip_preprocess.h"
#include "lego/sdk/io/image_reader.h"
#include "lego/sdk/nn/clip_vision.h"
#include "lego/sdk/nn/projector.h"

namespace lego::plugins {
namespace {

// The CLIP tower is stored as LLaVA checkpoints saved whole store it: this prefix + HF CLIPVisionModel names.
constexpr const char* kClipPrefix = "model.vision_tower.vision_tower.vision_model.";
// The released checkpoint's projector.
constexpr const char* kProjectorPrefix = "model.mm_vision_projector.";

nn::ClipVisionOptions clip_options(const ModalityConfig& c) {
  nn::ClipVisionOptions o;
  o.image_size(c.get_int("image_size", o.image_size()))
      .patch_size(c.get_int("patch_size", o.patch_size()))
      .width(c.get_int("width", o.width()))
      .layers(c.get_int("layers", o.layers()))
      .heads(c.get_int("heads", o.heads()))
      .mlp_dim(c.get_int("mlp_dim", o.mlp_dim()))
      .layer_norm_eps(c.get_double("layer_norm_eps", o.layer_norm_eps()));
  return o;
}

class ImageModality : public EncoderAdapterModality {
 public:
  explicit ImageModality(const ModalityConfig& config)
      : clip_(clip_options(config)),
        projector_(nn::ProjectorOptions(clip_->options().width(), config.llm_hidden_size)
                       .type(config.get("projector", "mlp2x_gelu"))),
        feature_layer_(config.get_int("feature_layer", -2)) {
    if (config.llm_hidden_size <= 0) throw Error(ErrorKind::InvalidArgument, "image: llm_hidden_size must be positive");
    preprocess_.size = clip_->options().image_size();
    preprocess_.pad_to_square = config.get_bool("pad_to_square", true);
    set_parts(clip_.ptr(), kClipPrefix, projector_.ptr(), kProjectorPrefix);
  }

  std::string name() const override { return "image"; }
  std::string placeholder() const override { return "<image>"; }
  std::vector<std::string> frame_tokens() const override { return {"<im_start>", "<im_patch>", "<im_end>"}; }
  int64_t tokens() const override { return clip_->options().patches(); }
  std::vector<std::string> file_types() const override { return io::ImageReader::extensions(); }



  Media load(const std::filesystem::path& file) const override {
    const auto image = io::ImageReader::read(file);
    Media m;
    m.tensor = image::clip_preprocess(image, preprocess_);
    m.width = image.width;
    m.height = image.height;
    m.path = file;
    return m;
  }

  at::Tensor encode_features(const at::Tensor& batch) override {
    torch::NoGradGuard no_grad;
    auto hidden = clip_->hidden_state(batch.to(weight_options()), feature_layer_);
    return hidden.narrow(1, 1, hidden.size(1) - 1);  // drop CLS
  }

  at::Tensor encode(const at::Tensor& batch) override { return projector_(encode_features(batch)); }

 private:
  nn::ClipVisionTransformer clip_;
  nn::Projector projector_;
  int64_t feature_layer_;
  image::ClipPreprocessOptions preprocess_;
};

}  // namespace
}  // namespace lego::plugins

LEGO_PLUGIN(lego::plugins::ImageModality, "image")
