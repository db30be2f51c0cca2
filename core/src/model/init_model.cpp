#include "lego/model/init_model.h"

#include <algorithm>

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

// Fills `table` ([g*g, d] or [1 + g*g, d], the extra first row a class token's, left at 0) with fixed 2-D
// sine-cosine positions of a g x g grid, row-major, times `scale`: the first half of the columns encodes the
// column, the second the row, each as sines then cosines of d/4 frequencies 1/100^(k/(d/4)).
void fill_sincos_2d(torch::Tensor& table, double scale, const std::string& what) {
  const auto rows = table.dim() == 2 ? table.size(0) : 0, d = table.dim() == 2 ? table.size(1) : 0;
  int64_t g = 0;
  while ((g + 1) * (g + 1) <= rows) ++g;
  const int64_t extra = rows - g * g;
  if (table.dim() != 2 || g == 0 || extra > 1 || d % 4 != 0) {
    throw Error(ErrorKind::Format, what + ": a 2-D sine-cosine table needs shape [g*g (+1), d] with d a multiple of 4");
  }
  torch::NoGradGuard no_grad;
  const int64_t q = d / 4;
  auto omega = 1.0 / torch::pow(100.0, torch::arange(q, torch::kFloat64) / static_cast<double>(q));
  auto cell = torch::arange(g * g, torch::kFloat64);
  auto encode = [&](const torch::Tensor& p) {
    auto o = p.unsqueeze(1) * omega.unsqueeze(0);
    return torch::cat({o.sin(), o.cos()}, 1);
  };
  auto grid = torch::cat({encode(torch::remainder(cell, g)), encode(torch::div(cell, g, "floor"))}, 1) * scale;
  table.zero_();
  table.narrow(0, extra, g * g).copy_(grid.to(table.scalar_type()));
}

void init_model(const config::Config& config, const std::filesystem::path& out, uint64_t seed,
                const host::PluginHost& host, torch::ScalarType dtype) {
  if (dtype != torch::kFloat32 && dtype != torch::kBFloat16 && dtype != torch::kFloat16) {
    throw Error(ErrorKind::InvalidArgument, "init-model writes fp32, bf16 or fp16 weights, not " +
                                                std::string(c10::toString(dtype)));
  }
  auto cfg = config;
  // Everything is written into a staging folder renamed into place at the end: a failure (bad config,
  // full disk, plugin error) leaves no half-written model folder, and an existing one stays as it was.
  fs::StagedDirectory staged(out);
  const auto& dir = staged.path();
  // Tokenizer first: its size fixes the vocabulary. Either an existing sentencepiece model (the released
  // model's is LLaMA's) or one trained on the corpus.
  const auto base = config.source().parent_path();
  if (cfg.has("tokenizer.file")) {
    const auto file = base / cfg.get_string("tokenizer.file");
    if (cfg.has("tokenizer.corpus") || cfg.has("tokenizer.vocab_size")) {
      throw Error(ErrorKind::Format, config.source().string() +
                                         ": [tokenizer] names a file and a corpus to train one; give one of them");
    }
    if (!std::filesystem::is_regular_file(file)) {
      throw Error(ErrorKind::NotFound, config.source().string() + ": tokenizer.file " + file.string() + " not found");
    }
    std::filesystem::copy_file(file, dir / "tokenizer.model");
  } else {
    text::TrainerOptions trainer;
    trainer.vocab_size = cfg.get_int("tokenizer.vocab_size", trainer.vocab_size);
    text::train_sentencepiece(base / cfg.get_string("tokenizer.corpus"), dir / "tokenizer", trainer);
    std::filesystem::remove(dir / "tokenizer.vocab");
  }
  const auto added = cfg.get_list("tokenizer.added_tokens");
  const auto tokenizer = text::Tokenizer::from_file(dir / "tokenizer.model", added);

  cfg.set("llm.vocab_size", std::to_string(tokenizer.vocab_size()));
  const auto options = llama_options_from_config(cfg);
  // The modules only name and shape the parameters: their storage (torch::empty) is never touched, so a
  // 7B model costs address space, not memory. Each tensor is drawn when the file reaches it (below).
  llm::LlamaForCausalLM net(options);
  // [init] scheme: normal (N(0, std), std 0.02 by default: HF's initializer_range, what the released
  // models were trained from) or fan_in (N(0, gain^2 / fan_in): small models learn much faster from it).
  const auto scheme = cfg.get_string("init.scheme", "normal");
  if (scheme != "normal" && scheme != "fan_in") {
    throw Error(ErrorKind::Format, config.source().string() + ": init.scheme is '" + scheme + "' (normal or fan_in)");
  }
  const double scale = scheme == "normal" ? cfg.get_double("init.std", kInitStd, 1e-6, 10)
                                          : cfg.get_double("init.gain", 1.0, 1e-6, 10);
  const auto init_scheme = scheme == "normal" ? nn::ParameterInit::Scheme::Normal : nn::ParameterInit::Scheme::FanIn;

  // Every tensor in file order, with the generator that draws it: the LLM's from `seed`, each modality's
  // (encoder and adapter) from the next seed, in parameter order, as init_normal / init_fan_in would.
  std::vector<weights::TensorSpec> specs;
  std::vector<size_t> drawn_by;
  std::vector<std::unique_ptr<nn::ParameterInit>> inits;
  const auto add_group = [&](const std::vector<std::pair<std::string, torch::Tensor>>& params) {
    inits.push_back(std::make_unique<nn::ParameterInit>(init_scheme, scale, seed + inits.size()));
    for (const auto& [name, t] : params) {
      specs.push_back({name, dtype, t.sizes().vec()});
      drawn_by.push_back(inits.size() - 1);
    }
  };
  {
    std::vector<std::pair<std::string, torch::Tensor>> params;
    for (const auto& p : net->named_parameters()) params.emplace_back(p.key(), p.value());
    add_group(params);
  }

  config::Config model_ini;
  std::vector<std::string> sections;
  for (auto& [section, spec] : modality_sections(cfg, dir)) {
    sections.push_back(section);
    auto modality = host.create(spec.first, spec.second);
    auto params = modality->encoder_parameters();
    auto adapter = modality->adapter_parameters();
    params.insert(params.end(), adapter.begin(), adapter.end());
    add_group(params);  // the specs keep the shapes; the modality itself is no longer needed
    model_ini.set(section + ".plugin", spec.first);
  }
  // [init] sincos_2d = TENSOR: a position table that starts as fixed 2-D sine-cosine positions (scaled by
  // sincos_2d_scale) instead of noise; a vision transformer trained from scratch learns where things are
  // far sooner from it.
  std::string sincos_name;
  double sincos_scale = 1.0;
  if (cfg.has("init.sincos_2d")) {
    sincos_name = cfg.get_string("init.sincos_2d");
    sincos_scale = cfg.get_double("init.sincos_2d_scale", 1.0, 1e-6, 1e3);
    if (std::none_of(specs.begin(), specs.end(), [&](const auto& s) { return s.name == sincos_name; })) {
      throw Error(ErrorKind::Format, config.source().string() + ": init.sincos_2d names '" + sincos_name +
                                         "', no tensor of the model");
    }
  }
  // Before the sections are copied (copying reads every key): keys no plugin read are typos.
  cfg.has("model.media_order");
  cfg.has("model.system_prompt");
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
  if (cfg.has("model.system_prompt")) model_ini.set("model.system_prompt", cfg.get_string("model.system_prompt"));

  // One tensor in memory at a time (in float32 while it is drawn): a 7B model in bf16 is written in a few
  // hundred megabytes.
  weights::write_safetensors_streamed(
      dir / "model.safetensors", specs,
      [&](size_t i) {
        auto t = inits[drawn_by[i]]->next(specs[i].name, specs[i].shape);
        if (specs[i].name == sincos_name) {
          fill_sincos_2d(t, sincos_scale, config.source().string() + ": init.sincos_2d '" + sincos_name + "'");
        }
        return t.to(dtype);
      },
      {{"format", "pt"}, {"producer", "lego init-model"}});

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
