#include "lego/model/init_model.h"

#include "lego/fs/atomic_file.h"
#include "lego/host/plugin_host.h"
#include "lego/model/language_model.h"
#include "lego/model/released_defaults.h"
#include "lego/pipeline/pipeline.h"
#include "lego/sdk/error.h"
#include "lego/sdk/nn/linear.h"
#include "lego/weights/tensor_source.h"

namespace lego {

// HF's LlamaConfig.initializer_range.
constexpr double kInitStd = 0.02;

void init_model(const config::Config& config, const std::filesystem::path& out, uint64_t seed,
                const host::PluginHost& host) {
  auto cfg = config;
  // Everything is written into a staging folder renamed into place at the end: a failure (bad config,
  // full disk, plugin error) leaves no half-written model folder, and an existing one stays as it was.
  fs::StagedDirectory staged(out);
  const auto& dir = staged.path();
  // Tokenizer first: its size fixes the vocabulary.
  const auto corpus = config.source().parent_path() / cfg.get_string("tokenizer.corpus");
  text::TrainerOptions trainer;
  trainer.vocab_size = cfg.get_int("tokenizer.vocab_size", trainer.vocab_size);
  text::train_sentencepiece(corpus, dir / "tokenizer", trainer);
  std::filesystem::remove(dir / "tokenizer.vocab");
  const auto added = cfg.get_list("tokenizer.added_tokens");
  const auto tokenizer = text::Tokenizer::from_file(dir / "tokenizer.model", added);

  cfg.set("llm.vocab_size", std::to_string(tokenizer.vocab_size()));
  const auto options = llama_options_from_config(cfg);
  llm::LlamaForCausalLM net(options);
  nn::init_normal(*net, kInitStd, seed);

  std::vector<std::pair<std::string, torch::Tensor>> tensors;
  for (const auto& p : net->named_parameters()) tensors.emplace_back(p.key(), p.value());

  // Modalities: every parameter of each, encoder and adapter, drawn the same way.
  config::Config model_ini;
  uint64_t branch_seed = seed;
  std::vector<std::string> sections;
  for (auto& [section, spec] : modality_sections(cfg, dir)) {
    sections.push_back(section);
    auto modality = host.create(spec.first, spec.second);
    torch::nn::Module holder;
    auto params = modality->encoder_parameters();
    auto adapter = modality->adapter_parameters();
    params.insert(params.end(), adapter.begin(), adapter.end());
    for (size_t i = 0; i < params.size(); ++i) {
      // Dots are not allowed in registered names; the index keeps them apart.
      holder.register_parameter(std::to_string(i) + "_" + params[i].first.substr(params[i].first.rfind('.') + 1),
                                params[i].second);
    }
    nn::init_normal(holder, kInitStd, ++branch_seed);
    tensors.insert(tensors.end(), params.begin(), params.end());
    model_ini.set(section + ".plugin", spec.first);
  }
  // Before the sections are copied (copying reads every key): keys no plugin read are typos.
  cfg.has("model.media_order");
  if (const auto unknown = cfg.unread_keys(); !unknown.empty()) {
    throw Error(ErrorKind::Format, config.source().string() + ": unknown key '" + unknown.front() +
                                       "' (no part of lego or of the plugin of its section reads it)");
  }
  for (const auto& section : sections) {
    for (const auto& k : cfg.section_keys(section)) {
      if (k != "plugin") model_ini.set(section + "." + k, cfg.get_string(section + "." + k));
    }
  }
  if (!sections.empty()) {
    std::string order;
    for (const auto& n : cfg.has("model.media_order") ? cfg.get_list("model.media_order") : media_order_for(sections)) {
      order += (order.empty() ? "" : " ") + n;
    }
    model_ini.set("model.media_order", order);
  }
  weights::write_safetensors(dir / "model.safetensors", tensors, {{"format", "pt"}, {"producer", "lego init-model"}});

  llama_options_to_config(options, model_ini);
  model_ini.set("tokenizer.file", "tokenizer.model");
  if (!added.empty()) {
    std::string joined;
    for (const auto& a : added) joined += (joined.empty() ? "" : " ") + a;
    model_ini.set("tokenizer.added_tokens", joined);
  }
  fs::write_file_atomically(dir / "model.ini", model_ini.to_ini());
  staged.commit();
}

}  // namespace lego
