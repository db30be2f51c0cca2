// The image modality (`<image>`, 576 tokens at 336 px): CLIP ViT-L/14, hidden state of layer -2 without
// the CLS token, then the MLP2x-GELU projector (the released code's image branch; docs/lego-vs-paper.md).
//
// model.ini [image]: plugin = image; image_size, patch_size, width, layers, heads, mlp_dim,
// layer_norm_eps (CLIP's sizes); feature_layer (-2); projector (mlp2x_gelu); pad_to_square (true).
// Answers ground 2-D boxes relative to the padded square the model saw; they are mapped back onto the
// original image. Import: the released checkpoint holds the projector, and the CLIP tower comes from an
// HF CLIP directory given as `--clip DIR`.
#include <optional>
#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <sstream>

#include "lego/sdk/abi.h"
#include "lego/sdk/files.h"
#include "lego/sdk/json.h"
#include "lego/sdk/grounding.h"
#include "lego/sdk/image/clip_preprocess.h"
#include "lego/sdk/io/image_reader.h"
#include "lego/sdk/io/render.h"
#include "lego/sdk/io/synth_draw.h"
#include "lego/sdk/nn/clip_vision.h"
#include "lego/sdk/nn/projector.h"

namespace lego::plugins {
namespace {

// LLaVA-style checkpoints saved whole keep the CLIP tower under this prefix + HF CLIPVisionModel names.
constexpr const char* kVisionTowerPrefix = "model.vision_tower.vision_tower.";
constexpr const char* kClipPrefix = "model.vision_tower.vision_tower.vision_model.";
// The released checkpoint's projector.
constexpr const char* kProjectorPrefix = "model.mm_vision_projector.";
// The import input holding the CLIP tower (openai/clip-vit-large-patch14-336 for the release).
constexpr const char* kClipInput = "clip";

struct ImageMeta : MediaMeta {
  int64_t width = 0, height = 0;  // original pixels
};

const ImageMeta& image_meta(const Media& m) {
  const auto* meta = dynamic_cast<const ImageMeta*>(m.meta.get());
  if (meta == nullptr) throw Error(ErrorKind::InvalidArgument, m.path.string() + ": not a medium of the image modality");
  return *meta;
}

nn::ClipVisionOptions clip_options(const config::ConfigSection& c) {
  nn::ClipVisionOptions o;
  o.image_size(c.get_int("image_size", o.image_size(), 1, 4096))
      .patch_size(c.get_int("patch_size", o.patch_size()))
      .width(c.get_int("width", o.width()))
      .layers(c.get_int("layers", o.layers()))
      .heads(c.get_int("heads", o.heads()))
      .mlp_dim(c.get_int("mlp_dim", o.mlp_dim()))
      .layer_norm_eps(c.get_double("layer_norm_eps", o.layer_norm_eps()));
  return o;
}

int64_t json_int(const nlohmann::json& j, const char* key, const std::filesystem::path& file) {
  if (!j.contains(key) || !j[key].is_number_integer()) {
    throw Error(ErrorKind::Format, file.string() + ": \"" + key + "\" is missing or not an integer");
  }
  return j[key].get<int64_t>();
}

// A box as an answer writes it: 3 decimals.
grounding::Box round_box(const grounding::Box& b) {
  auto r = [](double v) { return std::round(v * 1000) / 1000; };
  return {r(b.x1), r(b.y1), r(b.x2), r(b.y2)};
}

class ImageModality : public EncoderAdapterModality {
 public:
  explicit ImageModality(const ModalityConfig& config)
      : clip_(clip_options(config.section)),
        projector_(nn::ProjectorOptions(clip_->options().width(), config.llm_hidden_size)
                       .type(config.section.get_string("projector", "mlp2x_gelu"))),
        feature_layer_(config.section.get_int("feature_layer", -2)) {
    if (config.llm_hidden_size <= 0) throw Error(ErrorKind::InvalidArgument, "image: llm_hidden_size must be positive");
    preprocess_.size = clip_->options().image_size();
    preprocess_.pad_to_square = config.section.get_bool("pad_to_square", true);
    set_parts(clip_.ptr(), kClipPrefix, projector_.ptr(), kProjectorPrefix);
  }

  std::string placeholder() const override { return "<image>"; }
  std::vector<std::string> frame_tokens() const override { return {"<im_start>", "<im_patch>", "<im_end>"}; }
  int64_t tokens() const override { return clip_->options().patches(); }
  std::vector<std::string> file_types() const override { return io::ImageReader::extensions(); }

  Media load(const std::filesystem::path& file, uint64_t /*seed: no randomness*/) const override {
    const auto image = io::ImageReader::read(file);
    auto meta = std::make_shared<ImageMeta>();
    meta->width = image.width;
    meta->height = image.height;
    try {
      return Media{file, image::clip_preprocess(image, preprocess_), meta};
    } catch (const Error& e) {
      throw Error(e.kind(), file.string() + ": " + e.what());  // preprocessing knows pixels, not the file
    }
  }

  at::Tensor encode_features(const MediaBatch& batch) override {
    // Frozen in every released stage; only a stage that trains the encoder itself records gradients here.
    std::optional<torch::NoGradGuard> frozen;
    if (!encoder_trainable()) frozen.emplace();
    auto hidden = clip_->hidden_state(batch.at("input").to(weight_options()), feature_layer_);
    return hidden.narrow(1, 1, hidden.size(1) - 1);  // drop CLS
  }

  at::Tensor encode(const MediaBatch& batch) override { return projector_(encode_features(batch)); }

  GroundingKinds grounding() const override { return {4, false}; }

  // Boxes are relative to the padded square the model saw: undo the padding, then scale to pixels.
  MappedBox map_box(const Media& media, const std::vector<double>& box) const override {
    if (box.size() != 4) throw Error(ErrorKind::InvalidArgument, "image: a box has 4 values, got " + std::to_string(box.size()));
    const auto& m = image_meta(media);
    const grounding::Box square{box[0], box[1], box[2], box[3]};
    const auto rel = preprocess_.pad_to_square ? grounding::unpad_box(square, m.width, m.height) : square;
    const auto px = grounding::to_pixels(rel, m.width, m.height);
    return {{rel.x1, rel.y1, rel.x2, rel.y2}, {px.x1, px.y1, px.x2, px.y2}, "px"};
  }

  bool render(const Media& media, const std::vector<GroundedPhrase>& phrases,
              const std::filesystem::path& out) const override {
    std::vector<io::LabelledBox> boxes;
    for (const auto& p : phrases) {
      if (!p.box) continue;
      const auto& a = p.box->absolute;
      boxes.push_back({p.phrase, a.at(0), a.at(1), a.at(2), a.at(3)});
    }
    io::draw_boxes(media.path, boxes, out);
    return true;
  }

  // A still of the scene (every object in its start state; a still has no event) as `stem`.png, with each
  // object's box as an answer about it writes it: relative to the padded square when the model pads.
  std::optional<synth::Rendered> synthesize(const synth::Scene& scene, const std::filesystem::path& stem) const override {
    const auto pixels = io::draw_scene(scene, std::nullopt);
    synth::Rendered out;
    out.file = stem;
    out.file += ".png";
    io::write_rgb_image(pixels, out.file);
    for (const auto& px : io::scene_boxes(scene, std::nullopt)) {
      // A still shows every object, and each centre lies in the frame: every box is there.
      const auto& b = px.value();
      const grounding::Box rel{b.x1 / scene.width, b.y1 / scene.height, b.x2 / scene.width, b.y2 / scene.height};
      const auto box = preprocess_.pad_to_square ? grounding::pad_box(rel, scene.width, scene.height) : round_box(rel);
      out.boxes.push_back({box.x1, box.y1, box.x2, box.y2});
    }
    return out;
  }

  std::vector<ImportInput> import_inputs() const override {
    return {{kClipInput, "HF CLIP (vision) directory holding the image branch's tower (openai/clip-vit-large-patch14-336)"}};
  }

  // The released checkpoint has the projector; the sizes of the tower come from the CLIP directory's
  // config.json, the feature layer from the checkpoint's, the projector's kind from its tensors.
  std::optional<ImportPlan> plan_import(const ImportContext& ctx) const override {
    const auto names = ctx.checkpoint->names();
    if (!has_prefix(names, kProjectorPrefix)) return std::nullopt;
    auto clip_dir = ctx.inputs.find(kClipInput);
    if (clip_dir == ctx.inputs.end()) {
      throw Error(ErrorKind::InvalidArgument, ctx.checkpoint->describe() +
                                                  " has an image projector: give the CLIP tower's directory with --clip");
    }
    const auto clip_file = clip_dir->second / "config.json";
    auto j = read_json_file(clip_file, "CLIP config");
    if (j.contains("vision_config")) j = j["vision_config"];
    const std::string act = j.value("hidden_act", std::string("quick_gelu"));
    if (act != "quick_gelu") {
      throw Error(ErrorKind::Unsupported, clip_file.string() + ": hidden_act '" + act + "' (the CLIP tower uses quick_gelu)");
    }
    ImportPlan plan;
    auto& o = plan.section;
    o["image_size"] = std::to_string(json_int(j, "image_size", clip_file));
    o["patch_size"] = std::to_string(json_int(j, "patch_size", clip_file));
    o["width"] = std::to_string(json_int(j, "hidden_size", clip_file));
    o["layers"] = std::to_string(json_int(j, "num_hidden_layers", clip_file));
    o["heads"] = std::to_string(json_int(j, "num_attention_heads", clip_file));
    o["mlp_dim"] = std::to_string(json_int(j, "intermediate_size", clip_file));
    {
      std::ostringstream eps;
      eps << (j.contains("layer_norm_eps") && j["layer_norm_eps"].is_number() ? j["layer_norm_eps"].get<double>() : 1e-5);
      o["layer_norm_eps"] = eps.str();
    }
    const auto lego_file = ctx.checkpoint_dir / "config.json";
    const auto lego = read_json_file(lego_file, "checkpoint config");
    o["feature_layer"] = std::to_string(lego.contains("mm_vision_select_layer") && !lego["mm_vision_select_layer"].is_null()
                                            ? json_int(lego, "mm_vision_select_layer", lego_file)
                                            : -2);
    const std::string projector = kProjectorPrefix;
    if (ctx.checkpoint->contains(projector + "0.weight") && ctx.checkpoint->contains(projector + "2.weight")) {
      o["projector"] = "mlp2x_gelu";
    } else if (ctx.checkpoint->contains(projector + "weight")) {
      o["projector"] = "linear";
    } else {
      throw Error(ErrorKind::NotFound, ctx.checkpoint->describe() + ": no " + projector + "* tensors of a known projector");
    }
    plan.rules.push_back({kVisionTowerPrefix, kClipInput, ""});
    return plan;
  }

 private:
  nn::ClipVisionTransformer clip_;
  nn::Projector projector_;
  int64_t feature_layer_;
  image::ClipPreprocessOptions preprocess_;
};

}  // namespace
}  // namespace lego::plugins

LEGO_PLUGIN(lego::plugins::ImageModality, "image")
