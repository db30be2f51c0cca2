// An example modality plugin, built outside the lego tree: `<pooled>` turns an image into `tokens` LLM
// tokens by average-pooling its pixels onto a grid and projecting each cell. It shows the whole plugin
// surface: options from model.ini, weights with names and shapes, load() on the SDK's readers, encode().
#include <ATen/ATen.h>
#include <torch/nn/functional/pooling.h>

#include "lego/sdk/abi.h"
#include "lego/sdk/image/clip_preprocess.h"
#include "lego/sdk/io/image_reader.h"
#include "lego/sdk/nn/projector.h"

namespace {

constexpr const char* kPrefix = "model.pooled_projector.";

class PooledImage : public lego::Modality {
 public:
  explicit PooledImage(const lego::ModalityConfig& c)
      : grid_(c.get_int("grid", 4)),
        projector_(lego::nn::ProjectorOptions(3, c.llm_hidden_size > 0 ? c.llm_hidden_size : 1).type("linear")) {}

  std::string name() const override { return "pooled"; }
  std::string placeholder() const override { return "<pooled>"; }
  std::vector<std::string> frame_tokens() const override { return {"<im_start>", "<im_patch>", "<im_end>"}; }
  int64_t tokens() const override { return grid_ * grid_; }
  std::vector<std::string> file_types() const override { return lego::io::ImageReader::extensions(); }
  void load_weights(const lego::TensorSource& s, at::ScalarType dtype, c10::Device device) override {
    lego::load_module(*projector_, s, kPrefix, dtype);
    projector_->to(device);
  }
  std::vector<std::pair<std::string, at::Tensor>> encoder_parameters() override { return {}; }
  std::vector<std::pair<std::string, at::Tensor>> adapter_parameters() override {
    return lego::prefixed_parameters(*projector_, kPrefix);
  }
  lego::Media load(const std::filesystem::path& file) const override {
    const auto image = lego::io::ImageReader::read(file);
    lego::image::ClipPreprocessOptions o;
    o.size = 8 * grid_;
    return {lego::image::clip_preprocess(image, o), image.width, image.height, 0.0, file};
  }
  at::Tensor encode_features(const at::Tensor& batch) override {
    auto pooled = torch::nn::functional::adaptive_avg_pool2d(
        batch, torch::nn::functional::AdaptiveAvgPool2dFuncOptions({grid_, grid_}));
    return pooled.flatten(2).transpose(1, 2);  // [B, grid*grid, 3]
  }
  at::Tensor encode(const at::Tensor& batch) override {
    const at::Tensor w = projector_->weight;
    return projector_(encode_features(batch.to(w.device(), w.scalar_type())));
  }

 private:
  int64_t grid_;
  lego::nn::Projector projector_;
};

}  // namespace

LEGO_PLUGIN(PooledImage, "pooled")
