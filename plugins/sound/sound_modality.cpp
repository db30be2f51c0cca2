// The sound modality (`<sound>`, 8 tokens) as the released code builds it (shared/reference/
// lego-original.md section 4): every channel at the file's rate -> torchaudio's sinc resampling to 16 kHz
// -> 3 clips of 2 s, each minus its mean, channel 0 -> Kaldi fbank (128 x 204, normalised) ->
// ImageBind-huge audio encoder -> [3, 1024] -> + audio position embedding -> audio Q-Former (8 queries,
// 2 layers) -> audio_llama_proj.
//
// model.ini [sound]: plugin = sound; clips (3), clip_seconds (2); channels (first: the release's channel 0;
// downmix: FFmpeg's down-mix to mono first); imagebind_width, imagebind_layers,
// imagebind_heads, imagebind_mlp_dim, imagebind_out_dim; qformer_hidden, qformer_heads,
// qformer_intermediate, audio_qformer_layers (2), queries (8), positions (8). Answers ground time spans,
// mapped to seconds of the sound. Import reads the sizes from the released tensors' shapes; the release
// keeps all of ImageBind-huge, of which only the audio path is used.
#include <optional>
#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <numbers>

#include "lego/sdk/abi.h"
#include "lego/sdk/audio/fbank.h"
#include "lego/sdk/io/av_readers.h"
#include "lego/sdk/io/synth_draw.h"
#include "lego/sdk/io/synth_random.h"
#include "lego/sdk/io/wav_writer.h"
#include "lego/sdk/nn/imagebind_audio.h"
#include "lego/sdk/nn/linear.h"
#include "lego/sdk/nn/qformer.h"
#include "lego/sdk/nn/temporal_position.h"

namespace lego::plugins {
namespace {

struct SoundEncoder : torch::nn::Module {
  explicit SoundEncoder(const nn::ImageBindAudioOptions& o) {
    audio_encoder = register_module("audio_encoder", nn::ImageBindAudioEncoder(o));
  }
  nn::ImageBindAudioEncoder audio_encoder{nullptr};
};

struct SoundAdapter : torch::nn::Module {
  SoundAdapter(int64_t positions, int64_t width, const nn::QFormerOptions& q, int64_t queries, int64_t llm) {
    position_embedding = register_module("audio_position_embedding", nn::TemporalPositionEmbedding(positions, width));
    qformer = register_module("audio_Qformer", nn::QFormer(q));
    query_tokens = register_parameter("audio_query_tokens", torch::empty({1, queries, q.hidden()}));
    llama_proj = register_module("audio_llama_proj", nn::Linear(nn::LinearOptions(q.hidden(), llm)));
  }
  nn::TemporalPositionEmbedding position_embedding{nullptr};
  nn::QFormer qformer{nullptr};
  torch::Tensor query_tokens;
  nn::Linear llama_proj{nullptr};
};

struct SoundMeta : MediaMeta {
  double duration_s = 0;
};

// SynthGround sounds: 16 kHz mono (the rate the encoder resamples to), one timbre per shape class.
constexpr int kSynthRate = 16000;
constexpr double kNoteSeconds = 0.35;
constexpr double kNoiseLevel = 0.004;  // background noise amplitude, about -48 dBFS
constexpr double kPeak = 0.5;          // the notes' peak amplitude

// One note of the timbre of `shape` at `f0` Hz added to `out` from sample `at`: circle, a pure sine
// decaying like a struck bar; square, a sustained odd-harmonic (square-ish) tone an octave and a half
// lower with vibrato; triangle, bursts of bright noise (clicks); star, a chirp rising two octaves from an
// octave above f0.
void add_note(std::vector<float>& out, size_t at, synth::Shape shape, double f0, io::SceneRandom& rng) {
  const auto length = static_cast<size_t>(kNoteSeconds * kSynthRate);
  const double two_pi = 2 * std::numbers::pi;
  double phase = 0, previous_noise = 0;
  for (size_t i = 0; i < length && at + i < out.size(); ++i) {
    const double t = static_cast<double>(i) / kSynthRate;
    const double attack = std::min(1.0, t / 0.005), release = std::min(1.0, (kNoteSeconds - t) / 0.01);
    double v = 0;
    switch (shape) {
      case synth::Shape::Circle:
        v = std::sin(two_pi * f0 * t) * std::exp(-t / 0.12);
        break;
      case synth::Shape::Square: {  // with a 6 Hz vibrato, which blurs the harmonics over neighbouring bands
        phase += two_pi * f0 / 3 * (1 + 0.04 * std::sin(two_pi * 6 * t)) / kSynthRate;
        for (int k = 1; k * f0 / 3 < kSynthRate / 2.5; k += 2) v += std::sin(k * phase) / k;
        v *= 0.8;
        break;
      }
      case synth::Shape::Triangle: {  // three 40 ms bursts; first differences make the noise bright
        const double burst = std::fmod(t, 0.11);
        const double noise = rng.uniform(-1, 1);
        v = burst < 0.04 ? (noise - previous_noise) * 0.7 * std::exp(-burst / 0.012) : 0.0;
        previous_noise = noise;
        break;
      }
      case synth::Shape::Star:  // exponential sweep 2 f0 -> 8 f0 over the note
        phase += two_pi * 2 * f0 * std::pow(4.0, t / kNoteSeconds) / kSynthRate;
        v = std::sin(phase) * std::sin(std::numbers::pi * t / kNoteSeconds);
        break;
    }
    out[at + i] += static_cast<float>(kPeak * v * attack * std::max(0.0, release));
  }
}

// The sound of the scene's sounding object: notes at seeded times over the duration (about two a second,
// at least two), its pitch jittered by the seed, over low seeded noise.
std::vector<float> synth_sound(const synth::Scene& scene) {
  const auto& object = scene.objects.at(static_cast<size_t>(scene.sounding));
  io::SceneRandom rng(scene.seed, io::SceneRandom::kSound), noise(scene.seed, io::SceneRandom::kNoise);
  std::vector<float> out(static_cast<size_t>(std::llround(scene.duration_s * kSynthRate)));
  for (auto& s : out) s = static_cast<float>(kNoiseLevel * noise.uniform(-1, 1));
  const double f0 = 660 * std::pow(2.0, rng.uniform(-1, 1) / 12);  // within a semitone of E5
  const int notes = std::max(2, static_cast<int>(scene.duration_s * 2));
  const double slot = scene.duration_s / notes;
  for (int n = 0; n < notes; ++n) {
    const double start = slot * (n + rng.uniform(0, std::max(0.0, 1 - kNoteSeconds / slot)));
    add_note(out, static_cast<size_t>(start * kSynthRate), object.shape, f0, rng);
  }
  return out;
}

nn::ImageBindAudioOptions imagebind_options(const config::ConfigSection& c) {
  nn::ImageBindAudioOptions o;
  o.width(c.get_int("imagebind_width", o.width()))
      .layers(c.get_int("imagebind_layers", o.layers()))
      .heads(c.get_int("imagebind_heads", o.heads()))
      .mlp_dim(c.get_int("imagebind_mlp_dim", o.mlp_dim()))
      .out_dim(c.get_int("imagebind_out_dim", o.out_dim()));
  return o;
}

class SoundModality : public EncoderAdapterModality {
 public:
  explicit SoundModality(const ModalityConfig& config)
      : encoder_(std::make_shared<SoundEncoder>(imagebind_options(config.section))) {
    const config::ConfigSection& c = config.section;
    if (config.llm_hidden_size <= 0) throw Error(ErrorKind::InvalidArgument, "sound: llm_hidden_size must be positive");
    // clips = 0 or a negative clip length reached torch (stack of nothing, negative narrow).
    clips_.clips = c.get_int("clips", clips_.clips, 1, 64);
    clips_.clip_seconds = c.get_double("clip_seconds", clips_.clip_seconds, 0.1, 600.0);
    const std::string channels = c.get_string("channels", "first");
    if (channels == "downmix") {
      mix_ = io::ChannelMix::kDownmix;
    } else if (channels != "first") {
      throw Error(ErrorKind::InvalidArgument, "sound.channels: '" + channels + "' is neither 'first' nor 'downmix'");
    }
    const int64_t out_dim = encoder_->audio_encoder->options().out_dim();
    nn::QFormerOptions q;
    q.hidden(c.get_int("qformer_hidden", q.hidden()))
        .heads(c.get_int("qformer_heads", q.heads()))
        .intermediate(c.get_int("qformer_intermediate", q.intermediate()))
        .layers(c.get_int("audio_qformer_layers", 2))
        .encoder_width(out_dim)
        .cross_attention_freq(1);
    adapter_ = std::make_shared<SoundAdapter>(c.get_int("positions", 8), out_dim, q, c.get_int("queries", 8), config.llm_hidden_size);
    if (clips_.clips > adapter_->position_embedding->positions()) {
      throw Error(ErrorKind::InvalidArgument, "sound: clips exceed the audio position embedding");
    }
    set_parts(encoder_, kPrefix, adapter_, kPrefix);
  }

  std::string placeholder() const override { return "<sound>"; }
  std::vector<std::string> frame_tokens() const override { return {"<so_start>", "<so_patch>", "<so_end>"}; }
  int64_t tokens() const override { return adapter_->query_tokens.size(1); }
  std::vector<std::string> file_types() const override { return io::AudioReader::extensions(); }


  Media load(const std::filesystem::path& file, uint64_t /*seed: no randomness*/) const override {
    const auto audio = io::AudioReader::read(file, mix_);
    auto meta = std::make_shared<SoundMeta>();
    meta->duration_s = audio.duration_s;
    return Media{file, audio::imagebind_clips(audio.samples, audio.rate, clips_), meta};  // [clips, 1, 128, 204]
  }

  // [B, clips, 1, 128, 204] -> ImageBind embeddings [B, clips, 1024]
  at::Tensor encode_features(const MediaBatch& media) override {
    const at::Tensor& batch = media.at("input");
    const at::Tensor w = adapter_->query_tokens;
    const int64_t b = batch.size(0), clips = batch.size(1);
    // Frozen in every released stage; only a stage that trains the encoder itself records gradients here.
    std::optional<torch::NoGradGuard> frozen;
    if (!encoder_trainable()) frozen.emplace();
    auto flat = batch.to(w.device(), w.scalar_type()).reshape({b * clips, batch.size(2), batch.size(3), batch.size(4)});
    return encoder_->audio_encoder(flat).view({b, clips, -1});
  }

  at::Tensor encode(const MediaBatch& batch) override {
    auto features = adapter_->position_embedding(encode_features(batch));  // one position per clip
    auto queries = adapter_->query_tokens.expand({features.size(0), -1, -1});
    return adapter_->llama_proj(adapter_->qformer(queries, features));
  }

  GroundingKinds grounding() const override { return {0, true}; }

  MappedSpan map_span(const Media& media, double t1, double t2) const override {
    const auto* meta = dynamic_cast<const SoundMeta*>(media.meta.get());
    if (meta == nullptr) throw Error(ErrorKind::InvalidArgument, media.path.string() + ": not a medium of the sound modality");
    return {t1 * meta->duration_s, t2 * meta->duration_s};
  }

  // The sound of the scene's sounding object as `stem`.wav (16 kHz mono PCM): its timbre tells the shape
  // class it comes from, so the sound singles that object out without locating it; nothing when no object
  // sounds.
  std::optional<synth::Rendered> synthesize(const synth::Scene& scene, const std::filesystem::path& stem) const override {
    io::check_scene(scene);
    if (scene.sounding < 0) return std::nullopt;
    synth::Rendered out;
    out.file = stem;
    out.file += ".wav";
    io::write_wav_mono16(out.file, synth_sound(scene), kSynthRate);
    out.singles_out = scene.sounding;
    return out;
  }

  // Sizes from the released tensors' shapes (ImageBind and Q-Former heads default to 12; --set changes them).
  std::optional<ImportPlan> plan_import(const ImportContext& ctx) const override {
    const TensorSource& s = *ctx.checkpoint;
    const auto names = s.names();
    if (!has_prefix(names, "model.audio_Qformer.")) return std::nullopt;
    const std::string ib = "model.audio_encoder.";
    ImportPlan plan;
    auto put = [&](const char* k, int64_t v) { plan.section[k] = std::to_string(v); };
    put("imagebind_width", tensor_dim(s, ib + "modality_preprocessors.audio.cls_token", 2));
    put("imagebind_layers", count_numbered(names, ib + "modality_trunks.audio.blocks."));
    put("imagebind_mlp_dim", tensor_dim(s, ib + "modality_trunks.audio.blocks.0.mlp.fc1.weight", 0));
    put("imagebind_out_dim", tensor_dim(s, ib + "modality_heads.audio.2.weight", 0));
    put("queries", tensor_dim(s, "model.audio_query_tokens", 1));
    put("qformer_hidden", tensor_dim(s, "model.audio_query_tokens", 2));
    put("qformer_intermediate", tensor_dim(s, "model.audio_Qformer.bert.encoder.layer.0.intermediate_query.dense.weight", 0));
    put("audio_qformer_layers", count_numbered(names, "model.audio_Qformer.bert.encoder.layer."));
    put("positions", tensor_dim(s, "model.audio_position_embedding.weight", 0));
    // ImageBind-huge is kept whole in the release; only its audio path is used.
    plan.unused_prefixes.push_back(ib);
    plan.derived_buffers.push_back("model.audio_Qformer.bert.embeddings.position_ids");
    return plan;
  }

 private:
  static constexpr const char* kPrefix = "model.";
  audio::ClipOptions clips_;
  io::ChannelMix mix_ = io::ChannelMix::kKeep;
  std::shared_ptr<SoundEncoder> encoder_;
  std::shared_ptr<SoundAdapter> adapter_;
};

}  // namespace
}  // namespace lego::plugins

LEGO_PLUGIN(lego::plugins::SoundModality, "sound")
