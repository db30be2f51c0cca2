#include "lego/pipeline/pipeline.h"

#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <mutex>
#include <optional>
#include <set>

#include "lego/model/released_defaults.h"
#include "lego/sdk/error.h"
#include "lego/weights/tensor_source.h"

namespace lego {
namespace {

size_t count_of(const std::string& text, const std::string& needle) {
  size_t n = 0;
  for (size_t at = text.find(needle); at != std::string::npos; at = text.find(needle, at + needle.size())) ++n;
  return n;
}

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

std::string joined(const std::vector<std::string>& names) {
  std::string out;
  for (const auto& n : names) out += (out.empty() ? "" : ", ") + n;
  return out.empty() ? "none" : out;
}

}  // namespace

std::map<std::string, std::pair<std::string, ModalityConfig>> modality_sections(const config::Config& config,
                                                                               const std::filesystem::path& model_dir) {
  std::map<std::string, std::pair<std::string, ModalityConfig>> out;
  const auto hidden = config.get_int("llm.hidden_size");
  auto shared = std::make_shared<const config::Config>(config);
  for (const auto& section : config.sections()) {
    if (!config.has(section + ".plugin")) continue;
    ModalityConfig mc{config::ConfigSection(shared, section), hidden, model_dir};
    out.emplace(section, std::make_pair(config.get_string(section + ".plugin"), std::move(mc)));
  }
  return out;
}

struct Pipeline::Decoding {
  std::mutex mutex;
  std::optional<generate::Generator> generator;
  const void* net = nullptr;  // the module it was made for
};

Pipeline::Pipeline(LanguageModel llm, std::shared_ptr<const host::PluginHost> host)
    : host_(std::move(host)), llm_(std::move(llm)), decoding_(std::make_unique<Decoding>()) {}

Pipeline::~Pipeline() = default;

const text::Tokenizer& Pipeline::tokenizer() const { return *llm_.tokenizer; }

std::unique_ptr<Pipeline> Pipeline::load(const std::filesystem::path& dir, const LoadOptions& options,
                                         std::shared_ptr<const host::PluginHost> host) {
  if (!host) throw Error(ErrorKind::InvalidArgument, "Pipeline::load needs a plugin host");
  std::unique_ptr<Pipeline> p(new Pipeline(LanguageModel::load(dir, options), std::move(host)));
  const auto ini = (dir / "model.ini").string();
  const auto& tok = p->tokenizer();
  const auto file_source = weights::open_tensor_source(dir);  // one mapping: each tensor is loaded once
  // Remembers which tensors the modalities take, so that tensors nothing uses are an error, not ignored.
  class Recording : public TensorSource {
   public:
    explicit Recording(const TensorSource& inner) : inner_(inner) {}
    std::vector<std::string> names() const override { return inner_.names(); }
    bool contains(const std::string& name) const override { return inner_.contains(name); }
    TensorInfo info(const std::string& name) const override { return inner_.info(name); }
    at::Tensor get(const std::string& name) const override {
      used.insert(name);
      return inner_.get(name);
    }
    std::string describe() const override { return inner_.describe(); }
    mutable std::set<std::string> used;

   private:
    const TensorSource& inner_;
  };
  const auto source = std::make_unique<Recording>(*file_source);
  std::set<std::string> placeholders;
  for (auto& [section, spec] : modality_sections(p->llm_.config, dir)) {
    Entry e;
    e.modality = p->host_->create(spec.first, spec.second);
    e.placeholder = e.modality->placeholder();
    e.frame = e.modality->frame_tokens();
    e.tokens = e.modality->tokens();
    e.grounding = e.modality->grounding();
    if (e.frame.size() != 3 || e.tokens <= 0 || e.placeholder.empty()) {
      throw Error(ErrorKind::Plugin, ini + ": [" + section + "]: plugin " + spec.first +
                                         " must give a placeholder, 3 frame tokens and a positive token count");
    }
    if (!placeholders.insert(e.placeholder).second) {
      throw Error(ErrorKind::Format, ini + ": [" + section + "] uses the placeholder " + e.placeholder +
                                         " of another section");
    }
    for (const auto& t : e.frame) {
      try {
        tok.token_id(t);
      } catch (const Error&) {
        throw Error(ErrorKind::Format, ini + ": [" + section + "] needs the token " + t + " in [tokenizer] added_tokens");
      }
    }
    e.start_id = tok.token_id(e.frame[0]);
    e.end_id = tok.token_id(e.frame[2]);
    e.modality->load_weights(*source, options.dtype, options.device);
    p->modalities_.emplace(section, std::move(e));
  }
  for (const auto& [a, ea] : p->modalities_) {
    for (const auto& [b, eb] : p->modalities_) {
      if (a < b && ea.start_id == eb.start_id) {
        throw Error(ErrorKind::Format, ini + ": [" + a + "] and [" + b + "] share the start token " + ea.frame[0]);
      }
    }
  }
  if (p->llm_.config.has("model.media_order")) p->llm_.config.get_list("model.media_order");
  const auto format = p->llm_.config.get_string("model.prompt_format", "released");
  if (format != "released" && format != "training") {
    throw Error(ErrorKind::Format, ini + ": model.prompt_format is '" + format + "' (released or training)");
  }
  p->training_form_ = format == "training";
  p->system_prompt_ = p->llm_.config.get_string("model.system_prompt", text::kLegoSystemPrompt);
  if (const auto unknown = p->llm_.config.unread_keys(); !unknown.empty()) {
    throw Error(ErrorKind::Format, ini + ": unknown key '" + unknown.front() + "' (no part of lego or of the plugin of its section reads it)");
  }
  std::vector<std::string> unused;
  for (const auto& name : source->names()) {
    if (!is_language_model_tensor(name) && !source->used.count(name)) unused.push_back(name);
  }
  if (!unused.empty()) {
    throw Error(ErrorKind::Format, source->describe() + ": " + std::to_string(unused.size()) +
                                       " tensor(s) that no part of the model in " + ini + " uses, first '" +
                                       unused.front() + "' (a missing or misconfigured modality section?)");
  }
  std::vector<std::string> names;
  for (const auto& [n, e] : p->modalities_) names.push_back(n);
  if (p->llm_.config.has("model.media_order")) {
    for (const auto& n : p->llm_.config.get_list("model.media_order")) {
      if (!p->modalities_.count(n)) {
        throw Error(ErrorKind::Format, ini + ": model.media_order names '" + n + "', which is no modality section (" +
                                           joined(names) + ")");
      }
      if (std::find(p->order_.begin(), p->order_.end(), n) == p->order_.end()) p->order_.push_back(n);
    }
    for (const auto& n : names) {
      if (std::find(p->order_.begin(), p->order_.end(), n) == p->order_.end()) p->order_.push_back(n);
    }
  } else {
    p->order_ = media_order_for(names);
  }
  return p;
}

const Pipeline::Entry& Pipeline::entry(const std::string& name) const {
  auto it = modalities_.find(name);
  if (it == modalities_.end()) {
    throw Error(ErrorKind::InvalidArgument, llm_.dir.string() + ": the model has no " + name +
                                                " modality (it has: " + joined(order_) + ")");
  }
  return it->second;
}

Modality& Pipeline::modality(const std::string& name) const { return *entry(name).modality; }

std::vector<std::string> Pipeline::readers(const std::filesystem::path& file) const {
  std::string ext = file.extension().string();
  if (!ext.empty() && ext.front() == '.') ext.erase(0, 1);
  ext = lower(ext);
  std::vector<std::string> takers;
  for (const auto& name : order_) {
    const auto types = entry(name).modality->file_types();
    if (std::find(types.begin(), types.end(), ext) != types.end()) takers.push_back(name);
  }
  return takers;
}

std::string Pipeline::route(const std::filesystem::path& file) const {
  std::string ext = lower(file.extension().string());
  if (!ext.empty() && ext.front() == '.') ext.erase(0, 1);
  const auto takers = readers(file);
  if (takers.size() == 1) return takers.front();
  if (ext.empty()) {
    throw Error(ErrorKind::InvalidArgument, file.string() + ": no extension to route the file by; name its modality: "
                                                            "--media NAME=PATH (the model has: " + joined(order_) + ")");
  }
  if (takers.empty()) {
    throw Error(ErrorKind::InvalidArgument, file.string() + ": no modality of the model reads '." + ext +
                                                "' files (it has: " + joined(order_) + "); name one: --media NAME=PATH");
  }
  throw Error(ErrorKind::InvalidArgument, file.string() + ": several modalities read '." + ext + "' files (" +
                                              joined(takers) + "); name one: --media NAME=PATH");
}

std::vector<MediaInput> Pipeline::resolve(std::vector<MediaInput> media) const {
  for (auto& in : media) {
    if (in.modality.empty()) in.modality = route(in.path);
    entry(in.modality);  // refuses modalities the model lacks
  }
  return media;
}

std::string Pipeline::place_media(const std::string& message, const std::vector<MediaInput>& media) const {
  size_t total = 0;
  for (const auto& [name, e] : modalities_) total += count_of(message, e.placeholder);
  for (const auto& in : media) entry(in.modality);
  if (total == 0) {
    std::string prefix;
    for (const auto& name : order_) {
      for (const auto& in : media) {
        if (in.modality == name) prefix += entry(name).placeholder + "\n";
      }
    }
    return prefix + message;
  }
  for (const auto& [name, e] : modalities_) {
    // Captured by name: clang before 16 cannot capture a structured binding.
    const size_t want =
        std::count_if(media.begin(), media.end(), [&name = name](const MediaInput& in) { return in.modality == name; });
    const size_t have = count_of(message, e.placeholder);
    if (want != have) {
      throw Error(ErrorKind::InvalidArgument, "the prompt has " + std::to_string(have) + " " + e.placeholder +
                                                  " placeholders but " + std::to_string(want) + " " + name +
                                                  " files were given");
    }
  }
  return message;
}

std::vector<EncodedMedia> Pipeline::encode(const std::vector<MediaInput>& inputs, uint64_t seed) {
  const auto media = resolve(inputs);
  std::vector<EncodedMedia> out;
  out.reserve(media.size());
  for (size_t i = 0; i < media.size(); ++i) out.push_back(load_medium(media[i], seed + i));
  encode_loaded(out);
  return out;
}

EncodedMedia Pipeline::load_medium(const MediaInput& medium, uint64_t seed) const {
  const auto& e = entry(medium.modality);
  EncodedMedia out;
  out.modality = medium.modality;
  out.media = e.modality->load(medium.path, seed);
  if (auto meta = out.media.meta) {
    // The metadata's code lives in the plugin: it keeps the modality, and so its library, alive.
    auto keep = e.modality;
    out.media.meta = std::shared_ptr<const MediaMeta>(meta.get(), [meta, keep](const MediaMeta*) mutable {
      meta.reset();
      keep.reset();
    });
  }
  return out;
}

void Pipeline::encode_loaded(std::vector<EncodedMedia>& out) {
  std::map<std::string, std::vector<size_t>> by_modality;
  for (size_t i = 0; i < out.size(); ++i) by_modality[out[i].modality].push_back(i);
  for (const auto& [name, indices] : by_modality) {
    const auto& e = entry(name);
    std::vector<Media> group;
    for (size_t i : indices) group.push_back(out[i].media);
    auto batch = e.modality->collate(group);
    if (llm_.net->model->embed_tokens->weight.is_cuda()) {
      // Page-locked host memory: the plugin's copy to the GPU then goes by DMA, without a staging copy.
      for (auto& [key, tensor] : batch.tensors) {
        if (tensor.is_cpu() && !tensor.is_pinned()) tensor = tensor.pin_memory();
      }
    }
    const auto features = e.modality->encode(batch);
    const auto n = static_cast<int64_t>(indices.size());
    const int64_t hidden = llm_.options.hidden_size();
    if (features.dim() != 3 || features.size(0) != n || features.size(1) != e.tokens || features.size(2) != hidden) {
      throw Error(ErrorKind::Plugin, name + ": encode gave features of shape " + shape_string(features.sizes()) +
                                         ", the modality promised [" + std::to_string(n) + ", " +
                                         std::to_string(e.tokens) + ", " + std::to_string(hidden) + "]");
    }
    for (int64_t k = 0; k < n; ++k) out[indices[k]].features = features[k];
  }
}

SplicedBatch Pipeline::splice(const std::vector<std::string>& prompts,
                              const std::vector<std::vector<const EncodedMedia*>>& media, Padding padding) {
  if (prompts.size() != media.size() || prompts.empty()) {
    throw Error(ErrorKind::InvalidArgument, "splice: " + std::to_string(prompts.size()) + " prompts and " +
                                                std::to_string(media.size()) + " media lists");
  }
  std::vector<std::vector<int64_t>> ids;
  for (const auto& text : prompts) ids.push_back(tokenizer().encode(expand(text), /*add_bos=*/true));
  return splice_ids(std::move(ids), media, padding);
}

std::string Pipeline::expand(const std::string& text) const {
  std::string expanded = text;
  for (const auto& [name, e] : modalities_) {
    std::string block = e.frame[0];
    block.reserve(block.size() + static_cast<size_t>(e.tokens) * e.frame[1].size() + e.frame[2].size());
    for (int64_t i = 0; i < e.tokens; ++i) block += e.frame[1];
    block += e.frame[2];
    for (size_t at = expanded.find(e.placeholder); at != std::string::npos;
         at = expanded.find(e.placeholder, at + block.size())) {
      expanded.replace(at, e.placeholder.size(), block);
    }
  }
  return expanded;
}

SplicedBatch Pipeline::splice_ids(std::vector<std::vector<int64_t>> ids,
                                  const std::vector<std::vector<const EncodedMedia*>>& media, Padding padding,
                                  bool detach_text) {
  if (ids.size() != media.size() || ids.empty()) {
    throw Error(ErrorKind::InvalidArgument, "splice: " + std::to_string(ids.size()) + " prompts and " +
                                                std::to_string(media.size()) + " media lists");
  }
  const auto& tok = tokenizer();
  SplicedBatch out;
  out.ids = std::move(ids);
  const int64_t batch = static_cast<int64_t>(out.ids.size());
  int64_t length = 0;
  for (const auto& ids : out.ids) length = std::max<int64_t>(length, static_cast<int64_t>(ids.size()));
  out.padded_ids = torch::full({batch, length}, tok.pad_id(), torch::kInt64);
  out.valid = torch::zeros({batch, length}, torch::kBool);
  // Where each medium's features go: (row, first patch position), and the features in the same order.
  std::vector<int64_t> rows, cols;
  std::vector<at::Tensor> features;
  std::map<int64_t, const Entry*> by_start;
  for (const auto& [name, e] : modalities_) by_start.emplace(e.start_id, &e);
  for (int64_t b = 0; b < batch; ++b) {
    const auto& ids = out.ids[static_cast<size_t>(b)];
    const auto n_ids = static_cast<int64_t>(ids.size());
    const int64_t offset = padding == Padding::Left ? length - n_ids : 0;
    out.padded_ids[b].narrow(0, offset, n_ids).copy_(torch::tensor(ids, torch::kInt64));
    out.valid[b].narrow(0, offset, n_ids).fill_(true);
    std::map<const Entry*, std::vector<const EncodedMedia*>> pending;
    for (const auto* m : media[static_cast<size_t>(b)]) pending[&entry(m->modality)].push_back(m);
    std::map<const Entry*, size_t> used;
    for (int64_t p = 0; p < n_ids; ++p) {
      auto it = by_start.find(ids[static_cast<size_t>(p)]);
      if (it == by_start.end()) continue;
      const Entry& e = *it->second;
      const auto& queue = pending[&e];
      size_t& k = used[&e];
      if (k == queue.size()) {
        throw Error(ErrorKind::InvalidArgument, "the prompt has more " + e.frame[0] + " tokens than " +
                                                    e.modality->name() + " media (" + std::to_string(queue.size()) + ")");
      }
      const EncodedMedia* m = queue[k++];
      const int64_t end = p + e.tokens + 1;
      if (end >= n_ids || ids[static_cast<size_t>(end)] != e.end_id) {
        throw Error(ErrorKind::InvalidArgument, "a " + e.frame[0] + " in the prompt is not followed by " +
                                                    std::to_string(e.tokens) + " " + e.frame[1] + " tokens and " + e.frame[2]);
      }
      if (!m->features.defined() || m->features.dim() != 2 || m->features.size(0) != e.tokens) {
        throw Error(ErrorKind::InvalidArgument, m->media.path.string() + ": its features are not [" +
                                                    std::to_string(e.tokens) + ", hidden]");
      }
      rows.push_back(b);
      cols.push_back(offset + p + 1);
      features.push_back(m->features);
      p = end;
    }
    for (const auto& [e, queue] : pending) {
      if (used[e] != queue.size()) {
        throw Error(ErrorKind::InvalidArgument, std::to_string(queue.size()) + " " + e->modality->name() +
                                                    " media but " + std::to_string(used[e]) + " places for them in the prompt");
      }
    }
  }
  const auto device = llm_.net->model->embed_tokens->weight.device();
  auto embeds = llm_.net->model->embed(out.padded_ids.to(device));
  if (detach_text) {
    auto frame = torch::zeros_like(out.padded_ids, torch::kBool);
    for (const auto& [name, e] : modalities_) frame |= (out.padded_ids == e.start_id) | (out.padded_ids == e.end_id);
    embeds = torch::where(frame.to(device).unsqueeze(-1), embeds, embeds.detach());
  }
  if (!features.empty()) {
    // Out of place: autograd sees the embedding rows it keeps and the features that replace the others.
    const int64_t hidden = embeds.size(2);
    auto feats = torch::cat(features, 0).to(embeds.device(), embeds.scalar_type()).view({-1, hidden});
    std::vector<int64_t> r, c;
    for (size_t i = 0; i < rows.size(); ++i) {
      const int64_t n = features[i].size(0);
      for (int64_t j = 0; j < n; ++j) {
        r.push_back(rows[i]);
        c.push_back(cols[i] + j);
      }
    }
    auto ri = torch::tensor(r, torch::kInt64).to(embeds.device());
    auto ci = torch::tensor(c, torch::kInt64).to(embeds.device());
    embeds = embeds.index_put({ri, ci}, feats);
  }
  out.embeds = embeds;
  out.valid = out.valid.to(device);
  return out;
}

SplicedBatch Pipeline::splice(const std::string& prompt, const std::vector<EncodedMedia>& media) {
  std::vector<const EncodedMedia*> ptrs;
  for (const auto& m : media) ptrs.push_back(&m);
  return splice(std::vector<std::string>{prompt}, {ptrs});
}

Grounding Pipeline::ground(const grounding::Mentions& mentions, const std::vector<EncodedMedia>& media) const {
  Grounding out;
  auto first = [&](auto&& carries) {
    for (size_t i = 0; i < media.size(); ++i) {
      if (carries(entry(media[i].modality).grounding)) return static_cast<int>(i);
    }
    return -1;
  };
  for (const auto& m : mentions.boxes) {
    GroundedBox g{m, first([&](const GroundingKinds& k) { return k.box_values == static_cast<int>(m.values.size()); }), {}};
    if (g.medium >= 0) {
      const auto& em = media[static_cast<size_t>(g.medium)];
      g.mapped = entry(em.modality).modality->map_box(em.media, m.values);
    }
    out.boxes.push_back(std::move(g));
  }
  const int timed = first([](const GroundingKinds& k) { return k.spans; });
  for (const auto& m : mentions.spans) {
    GroundedSpan g{m, timed, {}};
    if (timed >= 0) {
      const auto& em = media[static_cast<size_t>(timed)];
      g.mapped = entry(em.modality).modality->map_span(em.media, m.span.t1, m.span.t2);
    }
    out.spans.push_back(std::move(g));
  }
  return out;
}

bool Pipeline::render(const Grounding& grounding, const std::vector<EncodedMedia>& media,
                      const std::filesystem::path& out) const {
  for (size_t i = 0; i < media.size(); ++i) {
    std::vector<GroundedPhrase> phrases;
    for (const auto& b : grounding.boxes) {
      if (b.medium == static_cast<int>(i)) phrases.push_back({b.mention.phrase, b.mapped, std::nullopt});
    }
    for (const auto& s : grounding.spans) {
      if (s.medium == static_cast<int>(i)) phrases.push_back({s.mention.phrase, std::nullopt, s.mapped});
    }
    if (entry(media[i].modality).modality->render(media[i].media, phrases, out)) return true;
  }
  return false;
}

std::string Pipeline::prompt(const Request& request, const std::string& placed_message) const {
  if (request.raw) return placed_message;
  const auto& system = request.system ? *request.system : system_prompt_;
  if (training_form_) return text::render_training_form_prompt(request.history, placed_message, system);
  return text::render_inference_prompt(request.history, placed_message, system);
}

PreparedRequest Pipeline::prepare(const Request& request, const std::vector<EncodedMedia>& earlier) {
  PreparedRequest p;
  torch::NoGradGuard no_grad;  // answering never trains
  request.sampling.validate();
  const auto media = resolve(request.media);
  p.answer.message = place_media(request.message, media);
  const auto t0 = std::chrono::steady_clock::now();
  auto fresh = encode(media, request.media_seed);
  p.answer.encode_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  p.answer.media = earlier;
  p.answer.media.insert(p.answer.media.end(), std::make_move_iterator(fresh.begin()), std::make_move_iterator(fresh.end()));
  splice_prepared(p, request);
  return p;
}

void Pipeline::splice_prepared(PreparedRequest& p, const Request& request) {
  p.sampling = request.sampling;
  if (!request.raw) p.sampling.stop.push_back(text::kLegoStop);
  p.spliced = splice(prompt(request, p.answer.message), p.answer.media);
  p.answer.prompt_ids = p.spliced.ids.front();
}

std::vector<EncodedMedia> Pipeline::load_media(const Request& request) const {
  const auto media = resolve(request.media);
  std::vector<EncodedMedia> out;
  out.reserve(media.size());
  for (size_t i = 0; i < media.size(); ++i) out.push_back(load_medium(media[i], request.media_seed + i));
  return out;
}

std::vector<PreparedRequest> Pipeline::prepare_all(const std::vector<Request>& requests,
                                                   std::vector<std::vector<EncodedMedia>> loaded,
                                                   std::vector<std::exception_ptr>& errors) {
  torch::NoGradGuard no_grad;
  const size_t n = requests.size();
  if (loaded.size() != n) throw Error(ErrorKind::InvalidArgument, "prepare_all: loaded media for " + std::to_string(loaded.size()) + " of " + std::to_string(n) + " requests");
  std::vector<PreparedRequest> out(n);
  errors.assign(n, nullptr);
  // Every request's media in one list, each request's at [first, first + count).
  std::vector<EncodedMedia> all;
  std::vector<std::pair<size_t, size_t>> span(n);
  for (size_t r = 0; r < n; ++r) {
    try {
      requests[r].sampling.validate();
      out[r].answer.message = place_media(requests[r].message, resolve(requests[r].media));
      if (loaded[r].size() != requests[r].media.size()) {
        throw Error(ErrorKind::InvalidArgument, "prepare_all: request " + std::to_string(r) + " has " +
                                                    std::to_string(requests[r].media.size()) + " media but " +
                                                    std::to_string(loaded[r].size()) + " loaded");
      }
      span[r] = {all.size(), loaded[r].size()};
      all.insert(all.end(), std::make_move_iterator(loaded[r].begin()), std::make_move_iterator(loaded[r].end()));
    } catch (...) {
      errors[r] = std::current_exception();
    }
  }
  auto slice = [&](size_t r) {
    return std::vector<EncodedMedia>(all.begin() + static_cast<std::ptrdiff_t>(span[r].first),
                                     all.begin() + static_cast<std::ptrdiff_t>(span[r].first + span[r].second));
  };
  const auto t0 = std::chrono::steady_clock::now();
  try {
    encode_loaded(all);
  } catch (...) {
    // One request's media broke the shared batch: encode each request's own, so that only it fails.
    for (size_t r = 0; r < n; ++r) {
      if (errors[r] || span[r].second == 0) continue;
      auto mine = slice(r);
      try {
        encode_loaded(mine);
        std::move(mine.begin(), mine.end(), all.begin() + static_cast<std::ptrdiff_t>(span[r].first));
      } catch (...) {
        errors[r] = std::current_exception();
      }
    }
  }
  const double encode_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  for (size_t r = 0; r < n; ++r) {
    if (errors[r]) continue;
    try {
      out[r].answer.encode_ms = encode_ms;
      out[r].answer.media = slice(r);
      splice_prepared(out[r], requests[r]);
    } catch (...) {
      errors[r] = std::current_exception();
      out[r] = PreparedRequest{};
    }
  }
  return out;
}

Answer Pipeline::finish(PreparedRequest prepared, generate::GenerationOutput output) const {
  Answer a = std::move(prepared.answer);
  a.output = std::move(output);
  a.mentions = grounding::parse(a.output.text);
  a.grounding = ground(a.mentions, a.media);
  return a;
}

Answer Pipeline::answer(const Request& request, const std::vector<EncodedMedia>& earlier,
                        const generate::StreamCallback& stream) {
  auto p = prepare(request, earlier);
  torch::NoGradGuard no_grad;
  std::unique_lock<std::mutex> lock(decoding_->mutex, std::try_to_lock);
  std::optional<generate::Generator> own;
  generate::Generator* generator = nullptr;
  if (lock.owns_lock()) {
    auto& d = *decoding_;
    if (!d.generator || d.net != llm_.net.get()) {
      d.generator.reset();
      d.generator.emplace(llm_.net, llm_.tokenizer);
      d.net = llm_.net.get();
    }
    generator = &*d.generator;
  } else {
    generator = &own.emplace(llm_.net, llm_.tokenizer);
  }
  generate::GenerationTimings timings;
  auto output = generator->generate_from_embeddings(p.spliced.embeds, p.spliced.valid, p.spliced.padded_ids, p.sampling,
                                                   stream, &timings).front();
  auto a = finish(std::move(p), std::move(output));
  a.timings = std::move(timings);
  return a;
}

}  // namespace lego
