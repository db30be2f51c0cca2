// Pipeline: a model directory's LLM composed with the modality plugins its model.ini names, answering
// requests (DESIGN.md, core/host: Model (composition), splice). The CLI, the Python bindings and training
// all go through it.
//
// Each model.ini section with a `plugin` key is a modality of the model, called by the section's name; the
// host makes it from that plugin with the section's keys. A request's media are loaded and encoded once,
// one batch per modality; each placeholder (`<NAME>`) expands to start + N patch + end tokens whose
// patch rows take the medium's features in a batched, out-of-place splice that leaves grad mode to the
// caller. Where a message has no placeholders, one per medium goes in front of it in model.ini's
// `[model] media_order`. The boxes and spans of an answer are mapped by the modality of the medium they
// refer to: the first medium (in request order) whose modality carries that kind of grounding.
#pragma once

#include <exception>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "lego/generate/generator.h"
#include "lego/grounding/grounding.h"
#include "lego/host/plugin_host.h"
#include "lego/model/language_model.h"
#include "lego/text/chat_template.h"

namespace lego {

struct MediaInput {
  std::string modality;  // the model's modality; "" routes the file by its extension
  std::filesystem::path path;
};

struct EncodedMedia {
  std::string modality;
  Media media;
  at::Tensor features;  // [tokens, llm hidden]
};

struct GroundedBox {
  grounding::BoxMention mention;
  int medium = -1;  // index into the answer's media; -1 when no medium carries such boxes
  std::optional<MappedBox> mapped;
};

struct GroundedSpan {
  grounding::SpanMention mention;
  int medium = -1;
  std::optional<MappedSpan> mapped;
};

struct Grounding {
  std::vector<GroundedBox> boxes;
  std::vector<GroundedSpan> spans;
};

// Prompts with their media spliced in, one row each.
struct SplicedBatch {
  std::vector<std::vector<int64_t>> ids;  // per prompt, placeholders expanded, BOS first
  at::Tensor embeds;                      // [B, T, hidden]
  at::Tensor valid;                       // [B, T] bool, false on padding
  at::Tensor padded_ids;                  // [B, T] int64, the pad id on padding
};

enum class Padding { Left, Right };  // generation pads on the left, training on the right

struct Request {
  std::vector<text::Turn> history;  // earlier turns, for a conversation
  std::string message;
  std::vector<MediaInput> media;    // a modality's placeholders take its media in this order
  std::optional<std::string> system;  // the template's system prompt; unset: the model's (system_prompt())
  bool raw = false;                 // send the message as is: no template, no "###" stop
  generate::SamplingOptions sampling;
  uint64_t media_seed = 0;          // seed of any randomness in loading the media
};

struct Answer {
  std::string message;  // the request's message with its placeholders placed, as a conversation keeps it
  generate::GenerationOutput output;
  std::vector<int64_t> prompt_ids;
  grounding::Mentions mentions;
  Grounding grounding;
  std::vector<EncodedMedia> media;  // every medium of the prompt, earlier turns' first
  double encode_ms = 0;
  generate::GenerationTimings timings;
};

// A request made ready to decode (Pipeline::prepare): its answer's fields known before generation, and
// the one-row prompt that a generator or a continuous batcher decodes.
struct PreparedRequest {
  Answer answer;                       // message, prompt_ids, media and encode_ms filled in
  SplicedBatch spliced;                // one row, no padding
  generate::SamplingOptions sampling;  // the request's, with the template's stop string added
};

class Pipeline {
 public:
  // Opens `dir` (model.ini, tokenizer, weights) and makes its modalities with `host`, which the pipeline
  // keeps alive. Missing plugins, tokens, tensors and bad sections throw lego::Error naming them.
  static std::unique_ptr<Pipeline> load(const std::filesystem::path& dir, const LoadOptions& options,
                                        std::shared_ptr<const host::PluginHost> host);

  ~Pipeline();
  Pipeline(const Pipeline&) = delete;
  Pipeline& operator=(const Pipeline&) = delete;

  LanguageModel& llm() { return llm_; }
  // The system prompt the model was trained with: model.ini `[model] system_prompt`, conv_lego's when absent.
  // Requests without their own, and training examples, use it.
  const std::string& system_prompt() const { return system_prompt_; }
  const text::Tokenizer& tokenizer() const;
  // The model's modalities, in media order.
  const std::vector<std::string>& media_order() const { return order_; }
  // The modality called `name`; throws InvalidArgument listing the model's modalities.
  Modality& modality(const std::string& name) const;
  // The model's modality that reads files like `file`, by extension; throws when none or several do.
  std::string route(const std::filesystem::path& file) const;
  // Every modality of the model that reads files like `file` (by extension), in media order.
  std::vector<std::string> readers(const std::filesystem::path& file) const;
  // `media` with each modality named (routed by extension where empty) and known to the model.
  std::vector<MediaInput> resolve(std::vector<MediaInput> media) const;

  // Where `message` lacks placeholders, puts one per medium in front of it in media order; otherwise
  // checks that each modality has as many placeholders as media. Throws InvalidArgument on a mismatch.
  std::string place_media(const std::string& message, const std::vector<MediaInput>& media) const;
  // Loads (medium i with seed + i) and encodes `media` (resolved first), one batch per modality. Grad mode is
  // the caller's: under it, gradients reach the adapters.
  std::vector<EncodedMedia> encode(const std::vector<MediaInput>& media, uint64_t seed = 0);
  // The two halves of encode(): loading one medium (thread-safe: training loads ahead on a pool of
  // threads), and encoding loaded media (their features empty), one batch per modality.
  EncodedMedia load_medium(const MediaInput& medium, uint64_t seed) const;
  void encode_loaded(std::vector<EncodedMedia>& media);
  // The placeholder of the modality called `name` ("<image>").
  const std::string& placeholder(const std::string& name) const { return entry(name).placeholder; }
  // `text` with every placeholder expanded to its modality's start token, N patch tokens and end token.
  std::string expand(const std::string& text) const;
  // Expands the placeholders of each prompt, tokenizes (with BOS) and embeds it, and writes its media's
  // features over the patch rows, out of place. `media[b]` are prompt b's media in order.
  SplicedBatch splice(const std::vector<std::string>& prompts,
                      const std::vector<std::vector<const EncodedMedia*>>& media, Padding padding = Padding::Left);
  // The same from token ids whose media blocks are already expanded (training builds its ids piece by
  // piece). With `detach_text`, every embedding but the media blocks' start and end tokens is detached
  // from autograd: the release's stage-1 rule, under which only the new tokens' embeddings learn.
  SplicedBatch splice_ids(std::vector<std::vector<int64_t>> ids, const std::vector<std::vector<const EncodedMedia*>>& media,
                          Padding padding, bool detach_text = false);
  SplicedBatch splice(const std::string& prompt, const std::vector<EncodedMedia>& media);
  // The boxes and spans of `mentions` mapped onto `media` by their modalities.
  Grounding ground(const grounding::Mentions& mentions, const std::vector<EncodedMedia>& media) const;
  // Draws `grounding` onto the first medium whose modality can draw; false when none can.
  bool render(const Grounding& grounding, const std::vector<EncodedMedia>& media,
              const std::filesystem::path& out) const;

  // The templated prompt of `request` (its message already placed): the released inference form, or the
  // training form where model.ini says `[model] prompt_format = training`.
  std::string prompt(const Request& request, const std::string& placed_message) const;
  // Answers `request`: places, encodes, splices, generates and grounds. `earlier` are the media of the
  // conversation's earlier turns (their placeholders are in `request.history`). `stream` may be empty.
  Answer answer(const Request& request, const std::vector<EncodedMedia>& earlier = {},
                const generate::StreamCallback& stream = {});
  // answer() in two halves around generation, for callers that decode many requests together (a server):
  // prepare() places, encodes and splices; finish() takes the generated output and grounds it.
  PreparedRequest prepare(const Request& request, const std::vector<EncodedMedia>& earlier = {});
  // The media of `request` resolved and loaded (medium i with media_seed + i), not encoded: the thread-safe half
  // of prepare(), which a server runs on each request's own thread.
  std::vector<EncodedMedia> load_media(const Request& request) const;
  // prepare() for several requests at once from their loaded media (load_media), encoded together: one batch
  // per modality across the requests. A request that fails (its media, its prompt) gets its error in
  // `errors[i]` and an empty PreparedRequest; the others go on. encode_ms is the shared encoding's time.
  std::vector<PreparedRequest> prepare_all(const std::vector<Request>& requests,
                                           std::vector<std::vector<EncodedMedia>> loaded,
                                           std::vector<std::exception_ptr>& errors);
  Answer finish(PreparedRequest prepared, generate::GenerationOutput output) const;

 private:
  Pipeline(LanguageModel llm, std::shared_ptr<const host::PluginHost> host);

  struct Entry {
    std::shared_ptr<Modality> modality;
    std::string placeholder;
    std::vector<std::string> frame;  // start, patch, end
    int64_t start_id = 0, end_id = 0, tokens = 0;
    GroundingKinds grounding;
  };
  const Entry& entry(const std::string& name) const;
  // The end of preparing `request` whose message is placed and media encoded in `p`: sampling with the
  // template's stop, the spliced prompt and its ids.
  void splice_prepared(PreparedRequest& p, const Request& request);

  std::shared_ptr<const host::PluginHost> host_;  // outlives the modalities it made
  LanguageModel llm_;
  std::map<std::string, Entry> modalities_;
  std::vector<std::string> order_;
  bool training_form_ = false;  // model.ini [model] prompt_format = training
  std::string system_prompt_ = text::kLegoSystemPrompt;
  // The generator answer() decodes with, kept from one call to the next (on CUDA it keeps its captured
  // decoding graph); a call that finds it in use decodes with one of its own.
  struct Decoding;
  std::unique_ptr<Decoding> decoding_;
};

// The modality sections of a model config: section name -> (plugin, ModalityConfig); `file` is named in
// their errors.
std::map<std::string, std::pair<std::string, ModalityConfig>> modality_sections(const config::Config& config,
                                                                               const std::filesystem::path& model_dir);

}  // namespace lego
