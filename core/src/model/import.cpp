#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <map>
#include <set>
#include <sstream>

#include "lego/fs/atomic_file.h"
#include "lego/host/plugin_host.h"
#include "lego/model/import.h"
#include "lego/model/language_model.h"
#include "lego/model/released_defaults.h"
#include "lego/sdk/error.h"
#include "lego/sdk/files.h"
#include "lego/sdk/json.h"
#include "lego/weights/tensor_source.h"

namespace lego {
namespace {

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
  std::filesystem::path file;
  try {
    if (std::filesystem::exists(in / "added_tokens.json")) {
      file = in / "added_tokens.json";
      const auto j = read_json_file(file, "tokenizer file");
      if (!j.is_object()) throw Error(ErrorKind::Format, file.string() + ": expected an object of token: id");
      for (auto it = j.begin(); it != j.end(); ++it) by_id[it.value().get<int64_t>()] = it.key();
    } else if (std::filesystem::exists(in / "tokenizer_config.json")) {
      file = in / "tokenizer_config.json";
      const auto j = read_json_file(file, "tokenizer file");
      if (j.is_object() && j.contains("added_tokens_decoder")) {
        for (auto it = j["added_tokens_decoder"].begin(); it != j["added_tokens_decoder"].end(); ++it) {
          size_t used = 0;
          const int64_t id = std::stoll(it.key(), &used);
          if (used != it.key().size()) throw std::invalid_argument(it.key());
          by_id[id] = it.value().at("content").get<std::string>();
        }
      }
    }
  } catch (const nlohmann::json::exception&) {
    throw Error(ErrorKind::Format, file.string() + ": added tokens must map token text to integer ids");
  } catch (const std::logic_error&) {  // stoll: not a number, or out of range
    throw Error(ErrorKind::Format, file.string() + ": added_tokens_decoder keys must be integer token ids");
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

// Buffers older checkpoints saved that the LLM derives from its options.
bool is_derived_buffer(const std::string& name) {
  static const std::string kSuffix = ".self_attn.rotary_emb.inv_freq";
  return name.size() > kSuffix.size() && name.compare(name.size() - kSuffix.size(), kSuffix.size(), kSuffix) == 0;
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

}  // namespace

ImportReport import_checkpoint(const ImportOptions& options, const host::PluginHost* host) {
  const auto& in = options.in;
  const auto& out = options.out;
  if (!std::filesystem::is_directory(in)) throw Error(ErrorKind::NotFound, in.string() + ": not a directory");
  const auto config_file = in / "config.json";
  const auto hf_config = read_json_file(config_file, "checkpoint config");
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
  // Every branch of the checkpoint comes through the plugin that claims it: its plan names the section's
  // keys (sizes read from the tensors) and where its weights live; --set fills what tensors cannot tell.
  std::map<std::string, std::unique_ptr<TensorSource>> inputs;
  std::vector<std::string> unused_prefixes;
  std::set<std::string> derived;
  std::vector<std::string> modalities;
  if (options.kind == "groundinggpt") {
    if (host == nullptr) throw Error(ErrorKind::InvalidArgument, "importing modality branches needs the plugin host");
    ImportContext context;
    context.checkpoint = source.get();
    context.checkpoint_dir = in;
    context.inputs = options.inputs;
    for (const auto& name : host->modalities()) {
      ModalityConfig probe;
      probe.llm_hidden_size = llama.hidden_size();
      const auto plan = host->create(name, probe)->plan_import(context);
      if (!plan) continue;
      auto section = std::make_shared<config::Config>(config_file);
      for (const auto& [k, v] : plan->section) section->set(name + "." + k, v);
      for (const auto& assignment : options.overrides) {
        if (assignment.rfind(name + ".", 0) == 0) section->set(std::string_view(assignment));
      }
      auto modality = host->create(name, ModalityConfig{config::ConfigSection(section, name), llama.hidden_size(), out});
      for (const auto& w : modality->weights()) {
        const ImportPlan::Rule* rule = nullptr;
        for (const auto& r : plan->rules) {
          if (w.name.rfind(r.prefix, 0) == 0 && (rule == nullptr || r.prefix.size() > rule->prefix.size())) rule = &r;
        }
        if (rule == nullptr || rule->input.empty()) {
          const std::string from = rule ? rule->source_prefix + w.name.substr(rule->prefix.size()) : w.name;
          collect.take(*source, w.name, w.shape, from, "the [" + name + "] section");
          continue;
        }
        auto dir = options.inputs.find(rule->input);
        if (dir == options.inputs.end()) {
          throw Error(ErrorKind::InvalidArgument, "the " + name + " branch needs --" + rule->input + " DIR");
        }
        auto& input = inputs[rule->input];
        if (!input) input = weights::open_tensor_source(dir->second);
        collect.take(*input, w.name, w.shape, rule->source_prefix + w.name.substr(rule->prefix.size()),
                     (dir->second / "config.json").string());
      }
      ini.set(name + ".plugin", name);
      for (const auto& k : section->section_keys(name)) ini.set(name + "." + k, section->get_string(name + "." + k));
      unused_prefixes.insert(unused_prefixes.end(), plan->unused_prefixes.begin(), plan->unused_prefixes.end());
      derived.insert(plan->derived_buffers.begin(), plan->derived_buffers.end());
      modalities.push_back(name);
    }
  }
  for (const auto& assignment : options.overrides) {
    const auto section = assignment.substr(0, assignment.find('.'));
    if (std::find(modalities.begin(), modalities.end(), section) == modalities.end()) {
      throw Error(ErrorKind::InvalidArgument, "--set " + assignment + ": the checkpoint has no '" + section +
                                                  "' branch (imported: " + joined(modalities) + ")");
    }
  }
  if (!modalities.empty()) {
    std::string order;
    for (const auto& n : media_order_for(modalities)) order += (order.empty() ? "" : " ") + n;
    ini.set("model.media_order", order);
  }
  // What an extra input holds beyond the branch (a CLIP directory's text tower and heads) is not LEGO's.
  for (const auto& [name, input] : inputs) {
    for (const auto& n : collect.unused(*input)) report.skipped.push_back(input->describe() + ":" + n);
  }
  collect.check_missing();

  std::vector<std::string> unknown;
  for (const auto& name : collect.unused(*source)) {
    const bool branch_rest = std::any_of(unused_prefixes.begin(), unused_prefixes.end(),
                                         [&](const std::string& p) { return name.rfind(p, 0) == 0; });
    if (is_derived_buffer(name) || derived.count(name) || branch_rest || (llama.tie_word_embeddings() && name == "lm_head.weight")) {
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

  fs::StagedDirectory staged(out);  // the model folder appears whole or not at all
  std::filesystem::copy_file(in / "tokenizer.model", staged.path() / "tokenizer.model",
                             std::filesystem::copy_options::overwrite_existing);
  weights::write_safetensors(staged.path() / "model.safetensors", collect.tensors(),
                             {{"format", "pt"}, {"producer", "lego import " + options.kind}});
  llama_options_to_config(llama, ini);
  ini.set("tokenizer.file", "tokenizer.model");
  std::string names;
  for (const auto& a : added) names += (names.empty() ? "" : " ") + a;
  if (!names.empty()) ini.set("tokenizer.added_tokens", names);
  fs::write_file_atomically(staged.path() / "model.ini", ini.to_ini());
  staged.commit();
  return report;
}

}  // namespace lego
