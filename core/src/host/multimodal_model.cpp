#include "lego/host/multimodal_model.h"

#include <torch/torch.h>

#include <algorithm>

#include "lego/sdk/error.h"
#include "lego/weights/tensor_source.h"

namespace lego::host {
namespace {

size_t count_of(const std::string& text, const std::string& needle) {
  size_t n = 0;
  for (size_t at = text.find(needle); at != std::string::npos; at = text.find(needle, at + needle.size())) ++n;
  return n;
}

// The released training order of media in front of the text.
int order_of(const std::string& modality) {
  if (modality == "sound") return 0;
  if (modality == "video") return 1;
  if (modality == "image") return 2;
  return 3;
}

}  // namespace

std::map<std::string, std::pair<std::string, ModalityConfig>> modality_sections(const config::Config& config,
                                                                               const std::filesystem::path& model_dir) {
  std::map<std::string, std::pair<std::string, ModalityConfig>> out;
  const auto hidden = config.get_int("llm.hidden_size");
  for (const auto& section : config.sections()) {
    if (!config.has(section + ".plugin")) continue;
    ModalityConfig mc;
    mc.llm_hidden_size = hidden;
    mc.model_dir = model_dir;
    for (const auto& key : config.section_keys(section)) {
      if (key != "plugin") mc.options[key] = config.get_string(section + "." + key);
    }
    out.emplace(section, std::make_pair(config.get_string(section + ".plugin"), std::move(mc)));
  }
  return out;
}

MultimodalModel::MultimodalModel(LanguageModel llm, std::map<std::string, std::shared_ptr<Modality>> modalities)
    : llm_(std::move(llm)), modalities_(std::move(modalities)) {}

MultimodalModel MultimodalModel::load(const std::filesystem::path& dir, const LoadOptions& options,
                                      const PluginHost& host) {
  auto llm = LanguageModel::load(dir, options);
  std::map<std::string, std::shared_ptr<Modality>> modalities;
  auto source = weights::open_tensor_source(dir);  // shared mapping: each tensor is loaded once
  for (auto& [section, spec] : modality_sections(llm.config, dir)) {
    auto m = host.create(spec.first, spec.second);
    for (const auto& tok : m->frame_tokens()) {
      try {
        llm.tokenizer->token_id(tok);
      } catch (const Error&) {
        throw Error(ErrorKind::Format, (dir / "model.ini").string() + ": [" + section + "] needs the token " + tok +
                                           " in [tokenizer] added_tokens");
      }
    }
    m->load_weights(*source, options.dtype, options.device);
    modalities.emplace(m->name(), std::move(m));
  }
  return MultimodalModel(std::move(llm), std::move(modalities));
}

Modality& MultimodalModel::modality(const std::string& name) {
  auto it = modalities_.find(name);
  if (it == modalities_.end()) {
    std::string have;
    for (const auto& [n, m] : modalities_) have += (have.empty() ? "" : ", ") + n;
    throw Error(ErrorKind::InvalidArgument, llm_.dir.string() + ": the model has no " + name + " modality (it has: " +
                                                (have.empty() ? "none" : have) + ")");
  }
  return *it->second;
}

std::string MultimodalModel::place_media(const std::string& message, const std::vector<MediaInput>& media) {
  size_t total = 0;
  for (const auto& [name, m] : modalities_) total += count_of(message, m->placeholder());
  for (const auto& in : media) modality(in.modality);  // refuses modalities the model lacks
  if (total == 0) {
    std::vector<MediaInput> sorted = media;
    std::stable_sort(sorted.begin(), sorted.end(),
                     [](const MediaInput& a, const MediaInput& b) { return order_of(a.modality) < order_of(b.modality); });
    std::string prefix;
    for (const auto& in : sorted) prefix += modality(in.modality).placeholder() + "\n";
    return prefix + message;
  }
  for (const auto& [name, m] : modalities_) {
    const size_t want = std::count_if(media.begin(), media.end(), [&](const MediaInput& in) { return in.modality == name; });
    const size_t have = count_of(message, m->placeholder());
    if (want != have) {
      throw Error(ErrorKind::InvalidArgument, "the prompt has " + std::to_string(have) + " " + m->placeholder() +
                                                  " placeholders but " + std::to_string(want) + " " + name +
                                                  " files were given");
    }
  }
  return message;
}

std::vector<EncodedMedia> MultimodalModel::encode_media(const std::vector<MediaInput>& media) {
  std::vector<EncodedMedia> out;
  out.reserve(media.size());
  torch::NoGradGuard no_grad;
  for (const auto& in : media) {
    auto& m = modality(in.modality);
    EncodedMedia e;
    e.modality = in.modality;
    e.media = m.load(in.path);
    e.features = m.encode(e.media.tensor.unsqueeze(0)).squeeze(0);
    out.push_back(std::move(e));
  }
  return out;
}

SplicedPrompt MultimodalModel::splice(const std::string& text, const std::vector<EncodedMedia>& media) {
  // Expand each placeholder to start + N x patch + end.
  std::string expanded = text;
  for (const auto& [name, m] : modalities_) {
    const auto frame = m->frame_tokens();
    std::string block = frame.at(0);
    for (int64_t i = 0; i < m->tokens(); ++i) block += frame.at(1);
    block += frame.at(2);
    const std::string ph = m->placeholder();
    for (size_t at = expanded.find(ph); at != std::string::npos; at = expanded.find(ph, at + block.size())) {
      expanded.replace(at, ph.size(), block);
    }
  }
  SplicedPrompt out;
  out.ids = llm_.tokenizer->encode(expanded, /*add_bos=*/true);
  torch::NoGradGuard no_grad;
  const auto device = llm_.net->model->embed_tokens->weight.device();
  auto ids = torch::tensor(out.ids, torch::kInt64).to(device).unsqueeze(0);
  out.embeds = llm_.net->model->embed(ids);
  // Media of each modality fill that modality's start tokens in order. The frame tokens and their ids are
  // looked up once, not per prompt position.
  struct Slot {
    std::string name;
    std::vector<std::string> frame;
    int64_t end_id = 0;
    int64_t tokens = 0;
    std::vector<const EncodedMedia*> media;
    size_t used = 0;
  };
  std::map<int64_t, Slot> by_start;
  for (const auto& [name, m] : modalities_) {
    Slot slot{name, m->frame_tokens(), 0, m->tokens(), {}, 0};
    slot.end_id = llm_.tokenizer->token_id(slot.frame.at(2));
    for (const auto& e : media) {
      if (e.modality == name) slot.media.push_back(&e);
    }
    by_start.emplace(llm_.tokenizer->token_id(slot.frame.at(0)), std::move(slot));
  }
  for (size_t p = 0; p < out.ids.size(); ++p) {
    auto it = by_start.find(out.ids[p]);
    if (it == by_start.end()) continue;
    Slot& slot = it->second;
    const int64_t n = slot.tokens;
    if (slot.used == slot.media.size()) {
      throw Error(ErrorKind::InvalidArgument, "the prompt has more " + slot.frame[0] + " tokens than " + slot.name +
                                                  " media (" + std::to_string(slot.media.size()) + ")");
    }
    const EncodedMedia* e = slot.media[slot.used++];
    const size_t end = p + static_cast<size_t>(n) + 1;
    if (end >= out.ids.size() || out.ids[end] != slot.end_id) {
      throw Error(ErrorKind::InvalidArgument, "a " + slot.frame[0] + " in the prompt is not followed by " +
                                                  std::to_string(n) + " " + slot.frame[1] + " tokens and " + slot.frame[2]);
    }
    if (e->features.size(0) != n) {
      throw Error(ErrorKind::Plugin, slot.name + " features have " + std::to_string(e->features.size(0)) +
                                         " rows, the modality promised " + std::to_string(n));
    }
    out.embeds[0].narrow(0, static_cast<int64_t>(p) + 1, n).copy_(e->features);
  }
  for (const auto& [id, slot] : by_start) {
    if (slot.used != slot.media.size()) {
      throw Error(ErrorKind::InvalidArgument, std::to_string(slot.media.size()) + " " + slot.name + " media but " +
                                                  std::to_string(slot.used) + " places for them in the prompt");
    }
  }
  return out;
}

}  // namespace lego::host
