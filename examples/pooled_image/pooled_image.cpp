// An example modality plugin, built outside the lego tree: `<pooled>` turns an image into `grid`² LLM
// tokens by average-pooling its pixels onto a grid and projecting each cell. It shows the whole plugin
// surface of ABI 2: options from its model.ini section, weights with names and shapes, load() on the SDK's
// readers with the plugin's own metadata, the default collate, encode(), and mapping an answer's boxes
// back onto the image (and drawing them for `lego infer --render`).
#include <ATen/ATen.h>
#include <torch/nn/functional/pooling.h>

#include "lego/sdk/abi.h"
#include "lego/sdk/grounding.h"
#include "lego/sdk/image/clip_preprocess.h"
#include "lego/sdk/io/image_reader.h"
#include "lego/sdk/io/render.h"
#include "lego/sdk/nn/projector.h"

namespace {

constexpr const char* kPrefix = "model.pooled_projector.";

struct PooledMeta : lego::MediaMeta {
  int64_t width = 0, height = 0;
};

class PooledImage : public lego::Modality {
 public:
  explicit PooledImage(const lego::ModalityConfig& c)
      : grid_(c.section.get_int("grid", 4)),
        projector_(lego::nn::ProjectorOptions(3, c.llm_hidden_size > 0 ? c.llm_hidden_size : 1).type("linear")) {
    if (grid_ <= 0 || grid_ > 64) throw lego::Error(lego::ErrorKind::InvalidArgument, "pooled: grid must be in 1..64");
  }

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

  lego::Media load(const std::filesystem::path& file, uint64_t /*seed: no randomness*/) const override {
    const auto image = lego::io::ImageReader::read(file);
    lego::image::ClipPreprocessOptions o;
    o.size = 8 * grid_;
    auto meta = std::make_shared<PooledMeta>();
    meta->width = image.width;
    meta->height = image.height;
    return {file, lego::image::clip_preprocess(image, o), meta};
  }

  at::Tensor encode_features(const lego::MediaBatch& batch) override {
    auto pooled = torch::nn::functional::adaptive_avg_pool2d(
        batch.at("input"), torch::nn::functional::AdaptiveAvgPool2dFuncOptions({grid_, grid_}));
    return pooled.flatten(2).transpose(1, 2);  // [B, grid*grid, 3]
  }
  at::Tensor encode(const lego::MediaBatch& batch) override {
    const at::Tensor w = projector_->weight;
    lego::MediaBatch on_device{batch.size, {{"input", batch.at("input").to(w.device(), w.scalar_type())}}};
    return projector_(encode_features(on_device));
  }

  // Boxes are relative to the padded square the model saw, as for the released image branch.
  lego::GroundingKinds grounding() const override { return {4, false}; }
  lego::MappedBox map_box(const lego::Media& media, const std::vector<double>& box) const override {
    const auto* m = dynamic_cast<const PooledMeta*>(media.meta.get());
    if (m == nullptr || box.size() != 4) throw lego::Error(lego::ErrorKind::InvalidArgument, "pooled: not a box of an image");
    const auto rel = lego::grounding::unpad_box({box[0], box[1], box[2], box[3]}, m->width, m->height);
    const auto px = lego::grounding::to_pixels(rel, m->width, m->height);
    return {{rel.x1, rel.y1, rel.x2, rel.y2}, {px.x1, px.y1, px.x2, px.y2}, "px"};
  }
  bool render(const lego::Media& media, const std::vector<lego::GroundedPhrase>& phrases,
              const std::filesystem::path& out) const override {
    std::vector<lego::io::LabelledBox> boxes;
    for (const auto& p : phrases) {
      if (p.box) boxes.push_back({p.phrase, p.box->absolute[0], p.box->absolute[1], p.box->absolute[2], p.box->absolute[3]});
    }
    lego::io::draw_boxes(media.path, boxes, out);
    return true;
  }

 private:
  int64_t grid_;
  lego::nn::Projector projector_;
};

}  // namespace

LEGO_PLUGIN(PooledImage, "pooled")
