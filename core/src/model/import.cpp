#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "lego/fs/atomic_file.h"
#include "lego/host/plugin_host.h"
#include "lego/model/import.h"
#include "lego/model/language_model.h"
#include "lego/sdk/error.h"
#include "lego/weights/tensor_source.h"

namespace lego {
namespace {

nlohmann::json read_json(const std::filesystem::path& file) {
  std::ifstream in(file);
  if (!in) throw Error(ErrorKind::NotFound, file.string() + ": cannot open");
  try {
    return nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    throw Error(ErrorKind::Format, file.string() + ": not valid JSON: " + e.what());
  }
}

template <typename T>
T field(const nlohmann::json& j, const char* key, const std::filesystem::path& file) {
  if (!j.contains(key) || j[key].is_null()) throw Error(ErrorKind::NotFound, file.string() + ": missing \"" + key + "\"");
  try {
    return j[key].get<T>();
  } catch (const nlohmann::json::exception&) {
    throw Error(ErrorKind::Format, file.string() + ": \"" + key + "\" has the wrong type");
  }
}

template <typename T>
T field_or(const nlohmann::json& j, const char* key, T fallback, const std::filesystem::path& file) {
  return j.contains(key) && !j[key].is_null() ? field<T>(j, key, file) : fallback;
}

llm::LlamaOptions options_from_hf_config(const nlohmann::json& j, const std::filesystem::path& file) {
  llm::LlamaOptions o(field<int64_t>(j, "vocab_size", file), field<int64_t>(j, "hidden_size", file),
                      field<int64_t>(j, "intermediate_size", file), field<int64_t>(j, "num_hidden_layers", file),
                      field<int64_t>(j, "num_attention_heads", file));
  o.num_kv_heads(field_or<int64_t>(j, "num_key_value_heads", 0, file))
      .head_dim(field_or<int64_t>(j, "head_dim", 0, file))
      .rms_norm_eps(field_or<double>(j, "rms_norm_eps", 1e-6, file))
      .rope_theta(field_or<double>(j, "rope_theta", 10000.0, file))
      .max_position(field_or<int64_t>(j, "max_position_embeddings", 2048, file))
      .attention_bias(field_or<bool>(j, "attention_bias", false, file))
      .tie_word_embeddings(field_or<bool>(j, "tie_word_embeddings", false, file));
  if (j.contains("rope_scaling") && !j["rope_scaling"].is_null()) {
    const auto& rs = j["rope_scaling"];
    const std::string type = rs.value("rope_type", rs.value("type", std::string("default")));
    if (type == "linear") {
      o.rope_scaling_factor(field<double>(rs, "factor", file));
    } else if (type != "default") {
      throw Error(ErrorKind::Unsupported, file.string() + ": rope_scaling type '" + type + "' (lego supports linear)");
    }
  }
  if (j.contains("hidden_act") && j["hidden_act"] != "silu") {
    throw Error(ErrorKind::Unsupported, file.string() + ": hidden_act '" + j["hidden_act"].dump() + "' (want silu)");
  }
  try {
    o.validate();
  } catch (const Error& e) {
    throw Error(ErrorKind::Format, file.string() + ": " + e.what());
  }
  return o;
}

// Added tokens beyond the sentencepiece vocabulary, in id order, from added_tokens.json or
// tokenizer_config.json's added_tokens_decoder. Their ids must continue the vocabulary without gaps.
std::vector<std::string> added_tokens(const std::filesystem::path& in, int64_t sp_size) {
  std::map<int64_t, std::string> by_id;
  if (std::filesystem::exists(in / "added_tokens.json")) {
    const auto j = read_json(in / "added_tokens.json");
    for (auto it = j.begin(); it != j.end(); ++it) by_id[it.value().get<int64_t>()] = it.key();
  } else if (std::filesystem::exists(in / "tokenizer_config.json")) {
    const auto j = read_json(in / "tokenizer_config.json");
    if (j.contains("added_tokens_decoder")) {
      for (auto it = j["added_tokens_decoder"].begin(); it != j["added_tokens_decoder"].end(); ++it) {
        by_id[std::stoll(it.key())] = it.value().at("content").get<std::string>();
      }
    }
  }
  std::vector<std::string> out;
  for (const auto& [id, tok] : by_id) {
    if (id < sp_size) continue;  // <unk>, <s>, </s> and other pieces of the sentencepiece model itself
    if (id != sp_size + static_cast<int64_t>(out.size())) {
      throw Error(ErrorKind::Format, in.string() + ": added token '" + tok + "' has id " + std::to_string(id) +
                                         ", expected " + std::to_string(sp_size + static_cast<int64_t>(out.size())));
    }
    if (tok.find_first_of(" \t\n") != std::string::npos) {
      throw Error(ErrorKind::Unsupported, in.string() + ": added token '" + tok + "' contains whitespace");
    }
    out.push_back(tok);
  }
  return out;
}

bool is_derived_buffer(const std::string& name) {
  return name.size() > 17 && name.compare(name.size() - 17, 17, "rotary_emb.inv_freq") == 0;
}

}  // namespace

namespace {

std::string joined(const std::vector<std::string>& names, size_t most = 20) {
  std::string out;
  for (size_t i = 0; i < names.size() && i < most; ++i) out += (i ? ", " : "") + names[i];
  if (names.size() > most) out += ", ... (" + std::to_string(names.size() - most) + " more)";
  return out;
}

// Collects tensors named as the model expects them, from where the checkpoint keeps them.
class Collector {
 public:
  // `source_name` maps a model name to the name in `source`.
  void take(const TensorSource& source, const std::string& name, at::IntArrayRef shape, const std::string& source_name,
            const std::string& what_implies) {
    if (!source.contains(source_name)) {
      missing_.push_back(source.describe() + ": " + source_name);
      return;
    }
    const auto info = source.info(source_name);
    if (at::IntArrayRef(info.shape) != shape) {
      throw Error(ErrorKind::Format, info.file.string() + ": tensor '" + source_name + "' has shape " +
                                         shape_string(info.shape) + ", " + what_implies + " implies " + shape_string(shape));
    }
    tensors_.emplace_back(name, source.get(source_name));
    used_[&source].insert(source_name);
  }
  void check_missing() const {
    if (!missing_.empty()) {
      throw Error(ErrorKind::NotFound, "missing " + std::to_string(missing_.size()) + " tensors: " + joined(missing_));
    }
  }
  // Names of `source` nothing took.
  std::vector<std::string> unused(const TensorSource& source) const {
    std::vector<std::string> out;
    auto it = used_.find(&source);
    for (const auto& n : source.names()) {
      if (it == used_.end() || !it->second.count(n)) out.push_back(n);
    }
    return out;
  }
  const std::vector<std::pair<std::string, at::Tensor>>& tensors() const { return tensors_; }

 private:
  std::vector<std::pair<std::string, at::Tensor>> tensors_;
  std::vector<std::string> missing_;
  std::map<const TensorSource*, std::set<std::string>> used_;
};

// The released checkpoint keeps the CLIP tower apart (openai/clip-vit-large-patch14-336): an HF CLIP
// directory, whose vision tower we store under this prefix.
constexpr const char* kVisionTowerPrefix = "model.vision_tower.vision_tower.";

// [image] keys from an HF CLIP (vision) config.json, the LEGO config and the projector's tensors.
std::map<std::string, std::string> image_section(const std::filesystem::path& clip_dir, const nlohmann::json& lego,
                                                 const std::filesystem::path& lego_file, const TensorSource& source) {
  const auto clip_file = clip_dir / "config.json";
  auto j = read_json(clip_file);
  if (j.contains("vision_config")) j = j["vision_config"];
  const std::string act = j.value("hidden_act", std::string("quick_gelu"));
  if (act != "quick_gelu") {
    throw Error(ErrorKind::Unsupported, clip_file.string() + ": hidden_act '" + act + "' (the CLIP tower uses quick_gelu)");
  }
  std::map<std::string, std::string> o;
  o["image_size"] = std::to_string(field<int64_t>(j, "image_size", clip_file));
  o["patch_size"] = std::to_string(field<int64_t>(j, "patch_size", clip_file));
  o["width"] = std::to_string(field<int64_t>(j, "hidden_size", clip_file));
  o["layers"] = std::to_string(field<int64_t>(j, "num_hidden_layers", clip_file));
  o["heads"] = std::to_string(field<int64_t>(j, "num_attention_heads", clip_file));
  o["mlp_dim"] = std::to_string(field<int64_t>(j, "intermediate_size", clip_file));
  {
    std::ostringstream eps;
    eps << field_or<double>(j, "layer_norm_eps", 1e-5, clip_file);
    o["layer_norm_eps"] = eps.str();
  }
  o["feature_layer"] = std::to_string(field_or<int64_t>(lego, "mm_vision_select_layer", -2, lego_file));
  // The projector's kind shows in its tensors (the release hard-codes it).
  if (source.contains("model.mm_vision_projector.0.weight") && source.contains("model.mm_vision_projector.2.weight")) {
    o["projector"] = "mlp2x_gelu";
  } else if (source.contains("model.mm_vision_projector.weight")) {
    o["projector"] = "linear";
  } else {
    throw Error(ErrorKind::NotFound, source.describe() + ": no model.mm_vision_projector tensors");
  }
  return o;
}

// Dimension `dim` of a tensor's shape, naming the tensor when it is absent.
int64_t dim_of(const TensorSource& s, const std::string& name, size_t dim) {
  const auto info = s.info(name);
  if (info.shape.size() <= dim) {
    throw Error(ErrorKind::Format, s.describe() + ": tensor '" + name + "' has too few dimensions");
  }
  return info.shape[dim];
}

// How many numbered blocks `prefix`N. the source holds.
int64_t count_blocks(const std::vector<std::string>& names, const std::string& prefix) {
  int64_t n = 0;
  for (const auto& name : names) {
    if (name.rfind(prefix, 0) != 0) continue;
    const auto rest = name.substr(prefix.size());
    const auto dot = rest.find('.');
    try {
      n = std::max<int64_t>(n, std::stoll(rest.substr(0, dot)) + 1);
    } catch (const std::logic_error&) {
    }
  }
  return n;
}

// [video] from the released tensors' shapes (the release hard-codes the sizes). Head counts do not show
// in shapes: they keep the release's values (EVA 16, Q-Former 12) unless --set changes them.
std::map<std::string, std::string> video_section(const TensorSource& s) {
  const auto names = s.names();
  std::map<std::string, std::string> o;
  auto put = [&](const char* k, int64_t v) { o[k] = std::to_string(v); };
  const int64_t patch = dim_of(s, "model.visual_encoder.patch_embed.proj.weight", 2);
  const int64_t positions = dim_of(s, "model.visual_encoder.pos_embed", 1) - 1;
  const auto side = static_cast<int64_t>(std::llround(std::sqrt(static_cast<double>(positions))));
  put("eva_patch_size", patch);
  put("eva_image_size", side * patch);
  put("eva_width", dim_of(s, "model.visual_encoder.cls_token", 2));
  put("eva_layers", count_blocks(names, "model.visual_encoder.blocks."));
  put("eva_mlp_dim", dim_of(s, "model.visual_encoder.blocks.0.mlp.fc1.weight", 0));
  put("queries", dim_of(s, "model.query_tokens", 1));
  put("qformer_hidden", dim_of(s, "model.query_tokens", 2));
  put("qformer_intermediate", dim_of(s, "model.Qformer.bert.encoder.layer.0.intermediate_query.dense.weight", 0));
  const int64_t layers = count_blocks(names, "model.Qformer.bert.encoder.layer.");
  put("qformer_layers", layers);
  put("qformer_cross_freq", layers > 1 && s.contains("model.Qformer.bert.encoder.layer.1.crossattention.self.key.weight") ? 1 : 2);
  put("frame_positions", dim_of(s, "model.video_frame_position_embedding.weight", 0));
  put("frames", dim_of(s, "model.video_frame_position_embedding.weight", 0));
  put("video_queries", dim_of(s, "model.video_query_tokens", 1));
  put("video_qformer_layers", count_blocks(names, "model.video_Qformer.bert.encoder.layer."));
  return o;
}

// [sound] likewise (ImageBind heads default to 12, the Q-Former's to 12).
std::map<std::string, std::string> sound_section(const TensorSource& s) {
  const auto names = s.names();
  const std::string ib = "model.audio_encoder.";
  std::map<std::string, std::string> o;
  auto put = [&](const char* k, int64_t v) { o[k] = std::to_string(v); };
  put("imagebind_width", dim_of(s, ib + "modality_preprocessors.audio.cls_token", 2));
  put("imagebind_layers", count_blocks(names, ib + "modality_trunks.audio.blocks."));
  put("imagebind_mlp_dim", dim_of(s, ib + "modality_trunks.audio.blocks.0.mlp.fc1.weight", 0));
  put("imagebind_out_dim", dim_of(s, ib + "modality_heads.audio.2.weight", 0));
  put("queries", dim_of(s, "model.audio_query_tokens", 1));
  put("qformer_hidden", dim_of(s, "model.audio_query_tokens", 2));
  put("qformer_intermediate", dim_of(s, "model.audio_Qformer.bert.encoder.layer.0.intermediate_query.dense.weight", 0));
  put("audio_qformer_layers", count_blocks(names, "model.audio_Qformer.bert.encoder.layer."));
  put("positions", dim_of(s, "model.audio_position_embedding.weight", 0));
  return o;
}

bool has_prefix(const std::vector<std::string>& names, const std::string& prefix) {
  return std::any_of(names.begin(), names.end(), [&](const std::string& n) { return n.rfind(prefix, 0) == 0; });
}

}  // namespace

ImportReport import_checkpoint(const ImportOptions& options, const host::PluginHost* host) {
  const auto& in = options.in;
  const auto& out = options.out;
  if (!std::filesystem::is_directory(in)) throw Error(ErrorKind::NotFound, in.string() + ": not a directory");
  const auto config_file = in / "config.json";
  const auto hf_config = read_json(config_file);
  const auto llama = options_from_hf_config(hf_config, config_file);

  const auto sp = text::Tokenizer::from_file(in / "tokenizer.model");
  const auto added = added_tokens(in, sp.vocab_size());
  const auto tokenizer = text::Tokenizer::from_file(in / "tokenizer.model", added);
  if (tokenizer.vocab_size() != llama.vocab_size()) {
    throw Error(ErrorKind::Format, in.string() + ": config.json vocab_size " + std::to_string(llama.vocab_size()) +
                                       " differs from the tokenizer's " + std::to_string(tokenizer.vocab_size()) +
                                       " tokens (sentencepiece + added)");
  }

  auto source = weights::open_tensor_source(in);
  Collector collect;
  ImportReport report;
  // The parameters' names and shapes, from a model whose storage is never touched.
  llm::LlamaForCausalLM expected(llama);
  for (const auto& p : expected->named_parameters()) collect.take(*source, p.key(), p.value().sizes(), p.key(), "config.json");

  config::Config ini;
  std::unique_ptr<TensorSource> clip_source;
  const bool wants_image = options.kind == "groundinggpt" && has_prefix(source->names(), "model.mm_vision_projector");
  if (wants_image) {
    if (options.clip.empty()) {
      throw Error(ErrorKind::InvalidArgument, source->describe() +
                                                  " has an image projector: give the CLIP tower's directory with --clip");
    }
    if (host == nullptr) throw Error(ErrorKind::InvalidArgument, "importing the image branch needs the plugin host");
    clip_source = weights::open_tensor_source(options.clip);
    ModalityConfig mc;
    mc.options = image_section(options.clip, hf_config, config_file, *source);
    mc.llm_hidden_size = llama.hidden_size();
    auto image = host->create("image", mc);
    for (const auto& w : image->weights()) {
      if (w.name.rfind(kVisionTowerPrefix, 0) == 0) {
        collect.take(*clip_source, w.name, w.shape, w.name.substr(std::string(kVisionTowerPrefix).size()),
                     (options.clip / "config.json").string());
      } else {
        collect.take(*source, w.name, w.shape, w.name, "the image section");
      }
    }
    ini.set("image.plugin", "image");
    for (const auto& [k, v] : mc.options) ini.set("image." + k, v);
    // The CLIP directory's text tower and heads are not part of LEGO.
    for (const auto& n : collect.unused(*clip_source)) report.skipped.push_back(options.clip.string() + ":" + n);
  }
  // Video and sound branches: sizes from the tensors, heads from --set, checked against the plugins.
  const auto source_names = source->names();
  struct Branch {
    const char* section;
    const char* marker;
    std::map<std::string, std::string> (*options)(const TensorSource&);
  };
  for (const Branch& b : {Branch{"video", "model.video_Qformer.", &video_section},
                          Branch{"sound", "model.audio_Qformer.", &sound_section}}) {
    if (options.kind != "groundinggpt" || !has_prefix(source_names, b.marker)) continue;
    if (host == nullptr) throw Error(ErrorKind::InvalidArgument, std::string("importing the ") + b.section + " branch needs the plugin host");
    ModalityConfig mc;
    mc.options = b.options(*source);
    for (const auto& assignment : options.overrides) {
      const auto eq = assignment.find('=');
      const auto key = assignment.substr(0, eq);
      const std::string prefix = std::string(b.section) + ".";
      if (eq != std::string::npos && key.rfind(prefix, 0) == 0) mc.options[key.substr(prefix.size())] = assignment.substr(eq + 1);
    }
    mc.llm_hidden_size = llama.hidden_size();
    auto modality = host->create(b.section, mc);
    for (const auto& w : modality->weights()) collect.take(*source, w.name, w.shape, w.name, std::string("the ") + b.section + " section");
    ini.set(std::string(b.section) + ".plugin", b.section);
    for (const auto& [k, v] : mc.options) ini.set(std::string(b.section) + "." + k, v);
  }
  collect.check_missing();

  std::vector<std::string> unknown;
  for (const auto& name : collect.unused(*source)) {
    // ImageBind-huge is kept whole in the release; only its audio path is used, and its fixed logit scale
    // is a constant of the encoder.
    const bool imagebind_rest = name.rfind("model.audio_encoder.", 0) == 0;
    if (is_derived_buffer(name) || imagebind_rest || (llama.tie_word_embeddings() && name == "lm_head.weight")) {
      report.skipped.push_back(name);
    } else {
      unknown.push_back(name);
    }
  }
  if (!unknown.empty()) {
    throw Error(ErrorKind::Format, source->describe() + ": " + std::to_string(unknown.size()) +
                                       " tensors no part of the " + options.kind + " model uses: " + joined(unknown));
  }
  for (const auto& [name, t] : collect.tensors()) report.imported.push_back(name);

  std::filesystem::create_directories(out);
  std::filesystem::copy_file(in / "tokenizer.model", out / "tokenizer.model",
                             std::filesystem::copy_options::overwrite_existing);
  weights::write_safetensors(out / "model.safetensors", collect.tensors(),
                             {{"format", "pt"}, {"producer", "lego import " + options.kind}});
  llama_options_to_config(llama, ini);
  ini.set("tokenizer.file", "tokenizer.model");
  std::string names;
  for (const auto& a : added) names += (names.empty() ? "" : " ") + a;
  if (!names.empty()) ini.set("tokenizer.added_tokens", names);
  fs::write_file_atomically(out / "model.ini", ini.to_ini());
  return report;
}

}  // namespace lego
