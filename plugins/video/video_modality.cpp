// The video modality (`<video>`, 64 tokens), Video-LLaMA style as the released code builds it
// (shared/reference/lego-original.md section 3): 64 uniformly sampled frames resized to 224 x 224 ->
// EVA ViT-g/14 -> ln_vision -> BLIP-2 Q-Former (32 queries) -> + frame position embedding -> video
// Q-Former (64 queries, 2 layers) -> llama_proj. (The paper says CLIP encodes frames; the code uses EVA.)
//
// model.ini [video]: plugin = video; frames (64); eva_image_size, eva_patch_size, eva_width, eva_layers,
// eva_heads, eva_mlp_dim; qformer_layers, qformer_heads, qformer_hidden, qformer_intermediate,
// qformer_cross_freq, queries (32); frame_positions (64); video_qformer_layers (2), video_queries (64);
// random_crop (false: the deterministic identity crop; true: training's RandomResizedCrop, drawn from the
// seed load() is given). Answers ground time spans, mapped to seconds of the video; `--render` draws a
// strip of frames with the spans marked. Import reads the sizes from the released tensors' shapes.
#include <optional>
#include <ATen/ATen.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <random>

#include "lego/sdk/abi.h"
#include "lego/sdk/io/av_readers.h"
#include "lego/sdk/io/render.h"
#include "lego/sdk/io/synth_draw.h"
#include "lego/sdk/io/video_writer.h"
#include "lego/sdk/nn/eva_vit.h"
#include "lego/sdk/nn/linear.h"
#include "lego/sdk/nn/qformer.h"
#include "lego/sdk/nn/temporal_position.h"

namespace lego::plugins {
namespace {

// Frames per second of a synthesized video (SynthGround): enough to show an event's start and end.
constexpr int kSynthFps = 8;

// CLIP's normalisation, which the released video transform uses.
constexpr double kMean[3] = {0.48145466, 0.4578275, 0.40821073};
constexpr double kStd[3] = {0.26862954, 0.26130258, 0.27577711};

struct VideoMeta : MediaMeta {
  int64_t width = 0, height = 0;  // as displayed
  double duration_s = 0;
};

const VideoMeta& video_meta(const Media& m) {
  const auto* meta = dynamic_cast<const VideoMeta*>(m.meta.get());
  if (meta == nullptr) throw Error(ErrorKind::InvalidArgument, m.path.string() + ": not a medium of the video modality");
  return *meta;
}

nn::EvaVisionOptions eva_options(const config::ConfigSection& c) {
  nn::EvaVisionOptions o;
  o.image_size(c.get_int("eva_image_size", o.image_size(), 1, 4096))
      .patch_size(c.get_int("eva_patch_size", o.patch_size()))
      .width(c.get_int("eva_width", o.width()))
      .layers(c.get_int("eva_layers", o.layers()))
      .heads(c.get_int("eva_heads", o.heads()))
      .mlp_dim(c.get_int("eva_mlp_dim", o.mlp_dim()));
  return o;
}

nn::QFormerOptions qformer_options(const config::ConfigSection& c, int64_t encoder_width, const std::string& layers_key,
                                   int64_t layers, int64_t cross_freq) {
  nn::QFormerOptions o;
  o.hidden(c.get_int("qformer_hidden", o.hidden()))
      .heads(c.get_int("qformer_heads", o.heads()))
      .intermediate(c.get_int("qformer_intermediate", o.intermediate()))
      .layers(c.get_int(layers_key, layers))
      .encoder_width(encoder_width)
      .cross_attention_freq(cross_freq);
  return o;
}

// The adapter's loose parameters, registered under their released names.
struct VideoAdapter : torch::nn::Module {
  VideoAdapter(int64_t positions, int64_t queries, int64_t hidden, int64_t llm) {
    frame_positions = register_module("video_frame_position_embedding", nn::TemporalPositionEmbedding(positions, hidden));
    video_query_tokens = register_parameter("video_query_tokens", torch::empty({1, queries, hidden}));
    llama_proj = register_module("llama_proj", nn::Linear(nn::LinearOptions(hidden, llm)));
  }
  nn::TemporalPositionEmbedding frame_positions{nullptr};
  torch::Tensor video_query_tokens;
  nn::Linear llama_proj{nullptr};
};

struct FrameEncoder : torch::nn::Module {
  FrameEncoder(const nn::EvaVisionOptions& eva, const nn::QFormerOptions& q, int64_t queries) {
    visual_encoder = register_module("visual_encoder", nn::EvaVisionTransformer(eva));
    ln_vision = register_module("ln_vision", nn::make_layer_norm(eva.width(), 1e-5));
    qformer = register_module("Qformer", nn::QFormer(q));
    query_tokens = register_parameter("query_tokens", torch::empty({1, queries, q.hidden()}));
  }
  nn::EvaVisionTransformer visual_encoder{nullptr};
  torch::nn::LayerNorm ln_vision{nullptr};
  nn::QFormer qformer{nullptr};
  torch::Tensor query_tokens;
};

class VideoModality : public EncoderAdapterModality {
 public:
  explicit VideoModality(const ModalityConfig& config)
      : VideoModality(config.section, config.llm_hidden_size) {}

  VideoModality(const config::ConfigSection& c, int64_t llm_hidden_size)
      : frames_(c.get_int("frames", 64, 1, 1024)),
        random_crop_(c.get_bool("random_crop", false)),
        encoder_(std::make_shared<FrameEncoder>(eva_options(c), qformer_options(c, c.get_int("eva_width", 1408), "qformer_layers", 12,
                                                                                c.get_int("qformer_cross_freq", 2)),
                                                c.get_int("queries", 32))),
        video_qformer_(qformer_options(c, c.get_int("qformer_hidden", 768), "video_qformer_layers", 2, 1)) {
    if (llm_hidden_size <= 0) throw Error(ErrorKind::InvalidArgument, "video: llm_hidden_size must be positive");
    adapter_ = std::make_shared<VideoAdapter>(c.get_int("frame_positions", 64), c.get_int("video_queries", 64),
                                              video_qformer_->options().hidden(), llm_hidden_size);
    adapter_->register_module("video_Qformer", video_qformer_);
    if (frames_ > adapter_->frame_positions->positions()) {
      // The released model would index past Embedding(64) here (a pitfall of the original).
      throw Error(ErrorKind::InvalidArgument, "video: frames (" + std::to_string(frames_) + ") exceeds frame_positions (" +
                                                  std::to_string(adapter_->frame_positions->positions()) + ")");
    }
    set_parts(encoder_, kPrefix, adapter_, kPrefix);
  }

  std::string placeholder() const override { return "<video>"; }
  std::vector<std::string> frame_tokens() const override { return {"<vi_start>", "<vi_patch>", "<vi_end>"}; }
  int64_t tokens() const override { return adapter_->video_query_tokens.size(1); }
  std::vector<std::string> file_types() const override { return io::VideoReader::extensions(); }


  Media load(const std::filesystem::path& file, uint64_t seed) const override {
    const int64_t size = encoder_->visual_encoder->options().image_size();
    auto video = io::VideoReader::sample_uniform(file, frames_, size, size);
    auto x = video.frames.permute({3, 0, 1, 2}).to(at::kFloat);  // [3, T, H, W] in 0..255
    if (random_crop_) x = random_resized_crop(x, size, seed);
    auto mean = at::tensor({kMean[0], kMean[1], kMean[2]}, at::kFloat).view({3, 1, 1, 1});
    auto std = at::tensor({kStd[0], kStd[1], kStd[2]}, at::kFloat).view({3, 1, 1, 1});
    auto meta = std::make_shared<VideoMeta>();
    meta->width = video.info.width;
    meta->height = video.info.height;
    meta->duration_s = video.info.duration_s;
    return Media{file, ((x / 255.0 - mean) / std).contiguous(), meta};
  }

  // Videos shorter than `frames` give fewer frames: such a batch cannot stack with longer ones.
  // [B, 3, T, S, S] -> per frame EVA + ln_vision + BLIP-2 Q-Former: [B, T * queries, hidden] with frame positions.
  at::Tensor encode_features(const MediaBatch& media) override {
    const at::Tensor& batch = media.at("input");
    const at::Tensor w = encoder_->query_tokens;
    const int64_t b = batch.size(0), t = batch.size(2);
    auto frames = batch.to(w.device(), w.scalar_type()).permute({0, 2, 1, 3, 4}).reshape({b * t, 3, batch.size(3), batch.size(4)});
    at::Tensor q;
    {
      // Frozen in every released stage; only a stage that trains the encoder itself records gradients here.
      std::optional<torch::NoGradGuard> frozen;
      if (!encoder_trainable()) frozen.emplace();
      auto image_embeds = encoder_->ln_vision(encoder_->visual_encoder(frames));
      q = encoder_->qformer(w.expand({b * t, -1, -1}), image_embeds);  // [(b t), queries, hidden]
    }
    const int64_t queries = q.size(1), hidden = q.size(2);
    q = adapter_->frame_positions(q.view({b, t, queries, hidden}));  // one position per frame, over its queries
    return q.reshape({b, t * queries, hidden});
  }

  at::Tensor encode(const MediaBatch& batch) override {
    auto frames = encode_features(batch);
    auto queries = adapter_->video_query_tokens.expand({frames.size(0), -1, -1});
    return adapter_->llama_proj(video_qformer_(queries, frames));
  }

  GroundingKinds grounding() const override { return {0, true}; }

  MappedSpan map_span(const Media& media, double t1, double t2) const override {
    const double d = video_meta(media).duration_s;
    return {t1 * d, t2 * d};
  }

  bool render(const Media& media, const std::vector<GroundedPhrase>& phrases,
              const std::filesystem::path& out) const override {
    std::vector<io::LabelledSpan> spans;
    for (const auto& p : phrases) {
      if (p.span) spans.push_back({p.phrase, p.span->start_s, p.span->end_s});
    }
    io::draw_frame_strip(media.path, spans, out);
    return true;
  }

  // The scene as `stem`.mp4 (H.264, kSynthFps) for its duration, each frame showing the scene at the middle
  // of the time it is displayed; the event's span as an answer writes it (relative to the video's own
  // duration, 2 decimals). Spans are all the video grounds: no boxes.
  std::optional<synth::Rendered> synthesize(const synth::Scene& scene, const std::filesystem::path& stem) const override {
    io::check_scene(scene);
    const auto frames = std::max<int64_t>(1, std::llround(scene.duration_s * kSynthFps));
    synth::Rendered out;
    out.file = stem;
    out.file += ".mp4";
    io::VideoWriter writer(out.file, scene.width, scene.height, kSynthFps);
    for (int64_t i = 0; i < frames; ++i) {
      writer.write(io::draw_scene(scene, (static_cast<double>(i) + 0.5) / static_cast<double>(frames)));
    }
    writer.finish();
    if (scene.event) {
      auto round2 = [](double v) { return std::round(v * 100) / 100; };
      out.span = std::array<double, 2>{round2(scene.event->t1), round2(scene.event->t2)};
    }
    return out;
  }

  // Sizes from the released tensors' shapes (the release hard-codes them). Head counts do not show in
  // shapes: they keep the release's values (EVA 16, Q-Former 12) unless --set changes them.
  std::optional<ImportPlan> plan_import(const ImportContext& ctx) const override {
    const TensorSource& s = *ctx.checkpoint;
    const auto names = s.names();
    if (!has_prefix(names, "model.video_Qformer.")) return std::nullopt;
    ImportPlan plan;
    auto put = [&](const char* k, int64_t v) { plan.section[k] = std::to_string(v); };
    const int64_t patch = tensor_dim(s, "model.visual_encoder.patch_embed.proj.weight", 2);
    const int64_t positions = tensor_dim(s, "model.visual_encoder.pos_embed", 1) - 1;
    const auto side = static_cast<int64_t>(std::llround(std::sqrt(static_cast<double>(positions))));
    put("eva_patch_size", patch);
    put("eva_image_size", side * patch);
    put("eva_width", tensor_dim(s, "model.visual_encoder.cls_token", 2));
    put("eva_layers", count_numbered(names, "model.visual_encoder.blocks."));
    put("eva_mlp_dim", tensor_dim(s, "model.visual_encoder.blocks.0.mlp.fc1.weight", 0));
    put("queries", tensor_dim(s, "model.query_tokens", 1));
    put("qformer_hidden", tensor_dim(s, "model.query_tokens", 2));
    put("qformer_intermediate", tensor_dim(s, "model.Qformer.bert.encoder.layer.0.intermediate_query.dense.weight", 0));
    const int64_t layers = count_numbered(names, "model.Qformer.bert.encoder.layer.");
    put("qformer_layers", layers);
    put("qformer_cross_freq",
        layers > 1 && s.contains("model.Qformer.bert.encoder.layer.1.crossattention.self.key.weight") ? 1 : 2);
    put("frame_positions", tensor_dim(s, "model.video_frame_position_embedding.weight", 0));
    put("frames", tensor_dim(s, "model.video_frame_position_embedding.weight", 0));
    put("video_queries", tensor_dim(s, "model.video_query_tokens", 1));
    put("video_qformer_layers", count_numbered(names, "model.video_Qformer.bert.encoder.layer."));
    // The release's BERT embeddings keep position_ids (arange) as a persistent buffer.
    plan.derived_buffers = {"model.Qformer.bert.embeddings.position_ids", "model.video_Qformer.bert.embeddings.position_ids"};
    return plan;
  }

 private:
  static constexpr const char* kPrefix = "model.";

  // torchvision's RandomResizedCrop(size, scale (0.5, 1), ratio (3/4, 4/3), bicubic) on all frames alike.
  // Draws from `seed` alone, so a request or a training sample repeats exactly.
  static at::Tensor random_resized_crop(const at::Tensor& x, int64_t size, uint64_t seed) {
    std::mt19937_64 rng{seed};
    const int64_t h = x.size(2), w = x.size(3);
    const double area = static_cast<double>(h * w);
    std::uniform_real_distribution<double> scale(0.5, 1.0), log_ratio(std::log(3.0 / 4.0), std::log(4.0 / 3.0));
    for (int attempt = 0; attempt < 10; ++attempt) {
      const double target = area * scale(rng), ratio = std::exp(log_ratio(rng));
      const auto cw = static_cast<int64_t>(std::round(std::sqrt(target * ratio)));
      const auto ch = static_cast<int64_t>(std::round(std::sqrt(target / ratio)));
      if (cw > 0 && ch > 0 && cw <= w && ch <= h) {
        const int64_t top = std::uniform_int_distribution<int64_t>(0, h - ch)(rng);
        const int64_t left = std::uniform_int_distribution<int64_t>(0, w - cw)(rng);
        auto crop = x.narrow(2, top, ch).narrow(3, left, cw);
        // [3, T, h, w]: the frames are the batch of the resize.
        return at::upsample_bicubic2d(crop.transpose(0, 1), {size, size}, /*align_corners=*/false)
            .transpose(0, 1)
            .clamp(0, 255);
      }
    }
    return x;
  }

  int64_t frames_;
  bool random_crop_;
  std::shared_ptr<FrameEncoder> encoder_;
  nn::QFormer video_qformer_;
  std::shared_ptr<VideoAdapter> adapter_;
};

}  // namespace
}  // namespace lego::plugins

LEGO_PLUGIN(lego::plugins::VideoModality, "video")
