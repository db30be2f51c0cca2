// MultimodalModel: a model directory's LLM composed with the modality plugins its model.ini names
// (DESIGN.md, core/host: Model (composition), splice).
//
// Each model.ini section with a `plugin` key is a modality; the host makes it from that plugin with the
// section's keys. A prompt's placeholders (`<image>`, `<video>`, `<sound>`) expand to start + N patch +
// end tokens; the patch rows of the embedded prompt are overwritten with the media's features, each
// medium encoded once per request, as the released code splices them.
#pragma once

#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "lego/host/plugin_host.h"
#include "lego/model/language_model.h"

namespace lego::host {

struct MediaInput {
  std::string modality;  // "image", "video", "sound"
  std::filesystem::path path;
};

struct EncodedMedia {
  std::string modality;
  Media media;
  at::Tensor features;  // [tokens, llm hidden]
};

struct SplicedPrompt {
  std::vector<int64_t> ids;  // with the placeholders expanded
  at::Tensor embeds;         // [1, T, hidden], features spliced in
};

class MultimodalModel {
 public:
  static MultimodalModel load(const std::filesystem::path& dir, const LoadOptions& options, const PluginHost& host);

  LanguageModel& llm() { return llm_; }
  // The modality called `name`; throws NotFound naming the model directory.
  Modality& modality(const std::string& name);
  const std::map<std::string, std::shared_ptr<Modality>>& modalities() const { return modalities_; }

  // Where the user message lacks placeholders, puts one per medium in front of it (sound, video, image,
  // then the text, the released training order); otherwise checks that each modality has exactly as many
  // placeholders as media. Throws InvalidArgument on a mismatch or a modality the model lacks.
  std::string place_media(const std::string& message, const std::vector<MediaInput>& media);
  // Loads and encodes each medium.
  std::vector<EncodedMedia> encode_media(const std::vector<MediaInput>& media);
  // Expands placeholders in `text`, tokenizes (with BOS), embeds and splices `media` in order.
  SplicedPrompt splice(const std::string& text, const std::vector<EncodedMedia>& media);

 private:
  MultimodalModel(LanguageModel llm, std::map<std::string, std::shared_ptr<Modality>> modalities);

  LanguageModel llm_;
  std::map<std::string, std::shared_ptr<Modality>> modalities_;
};

// The modality sections of a model config: section name -> ModalityConfig (plugin key removed).
std::map<std::string, std::pair<std::string, ModalityConfig>> modality_sections(const config::Config& config,
                                                                               const std::filesystem::path& model_dir);

}  // namespace lego::host
