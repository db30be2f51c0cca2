#include <nlohmann/json.hpp>

#include <algorithm>
#include <fstream>
#include <map>
#include <sstream>

#include "lego/fs/atomic_file.h"
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

ImportReport import_hf_llama(const std::filesystem::path& in, const std::filesystem::path& out) {
  if (!std::filesystem::is_directory(in)) throw Error(ErrorKind::NotFound, in.string() + ": not a directory");
  const auto options = options_from_hf_config(read_json(in / "config.json"), in / "config.json");

  const auto sp = text::Tokenizer::from_file(in / "tokenizer.model");
  const auto added = added_tokens(in, sp.vocab_size());
  const auto tokenizer = text::Tokenizer::from_file(in / "tokenizer.model", added);
  if (tokenizer.vocab_size() != options.vocab_size()) {
    throw Error(ErrorKind::Format, in.string() + ": config.json vocab_size " + std::to_string(options.vocab_size()) +
                                       " differs from the tokenizer's " + std::to_string(tokenizer.vocab_size()) +
                                       " tokens (sentencepiece + added)");
  }

  // The parameters' names and shapes, from a model whose storage is never touched.
  llm::LlamaForCausalLM expected(options);
  auto source = weights::open_tensor_source(in);
  ImportReport report;
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  std::vector<std::string> missing;
  for (const auto& p : expected->named_parameters()) {
    if (!source->contains(p.key())) {
      missing.push_back(p.key());
      continue;
    }
    const auto info = source->info(p.key());
    if (at::IntArrayRef(info.shape) != p.value().sizes()) {
      std::ostringstream msg;
      msg << info.file.string() << ": tensor '" << p.key() << "' has shape " << at::IntArrayRef(info.shape)
          << ", config.json implies " << p.value().sizes();
      throw Error(ErrorKind::Format, msg.str());
    }
    tensors.emplace_back(p.key(), source->get(p.key()));
    report.imported.push_back(p.key());
  }
  if (!missing.empty()) {
    std::string list;
    for (const auto& m : missing) list += (list.empty() ? "" : ", ") + m;
    throw Error(ErrorKind::NotFound, source->describe() + ": missing " + std::to_string(missing.size()) + " tensors: " + list);
  }
  std::vector<std::string> unknown;
  std::sort(report.imported.begin(), report.imported.end());
  for (const auto& name : source->names()) {
    if (std::binary_search(report.imported.begin(), report.imported.end(), name)) continue;
    if (is_derived_buffer(name) || (options.tie_word_embeddings() && name == "lm_head.weight")) {
      report.skipped.push_back(name);
    } else {
      unknown.push_back(name);
    }
  }
  if (!unknown.empty()) {
    std::string list;
    for (const auto& u : unknown) list += (list.empty() ? "" : ", ") + u;
    throw Error(ErrorKind::Format, source->describe() + ": " + std::to_string(unknown.size()) +
                                       " tensors the LLaMA architecture does not use: " + list);
  }

  std::filesystem::create_directories(out);
  std::filesystem::copy_file(in / "tokenizer.model", out / "tokenizer.model",
                             std::filesystem::copy_options::overwrite_existing);
  weights::write_safetensors(out / "model.safetensors", tensors, {{"format", "pt"}, {"producer", "lego import hf-llama"}});
  config::Config ini;
  llama_options_to_config(options, ini);
  ini.set("tokenizer.file", "tokenizer.model");
  std::string joined;
  for (const auto& a : added) joined += (joined.empty() ? "" : " ") + a;
  if (!joined.empty()) ini.set("tokenizer.added_tokens", joined);
  fs::write_file_atomically(out / "model.ini", ini.to_ini());
  return report;
}

}  // namespace lego
