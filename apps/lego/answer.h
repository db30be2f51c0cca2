// Answering one multimodal request: shared by `lego infer` and `lego chat`.
#pragma once

#include <nlohmann/json.hpp>

#include <string>
#include <vector>

#include "lego/generate/generator.h"
#include "lego/grounding/grounding.h"
#include "lego/host/multimodal_model.h"

namespace lego::cli {

struct Answer {
  generate::GenerationOutput output;
  std::vector<int64_t> prompt_ids;
  grounding::Mentions mentions;
  double encode_ms = 0;
  generate::GenerationTimings timings;
};

// Encodes `media`, splices them into the already templated `text`, and generates. `stream` may be empty.
Answer answer(host::MultimodalModel& model, const std::string& text, const std::vector<host::EncodedMedia>& media,
              const generate::SamplingOptions& sampling, const generate::StreamCallback& stream);

// Boxes and spans of an answer as JSON, de-normalised onto the first image (boxes) and the first medium
// with a duration (spans): {"boxes": [...], "spans": [...]}.
nlohmann::json grounding_json(const grounding::Mentions& mentions, const std::vector<host::EncodedMedia>& media);

// Draws the boxes with their phrases on `image` and writes `out` (PNG, JPEG, ... by extension).
void render_boxes(const std::filesystem::path& image, const grounding::Mentions& mentions,
                  const std::filesystem::path& out);

// Writes a strip of `frames` uniformly sampled frames of `video`, those inside any of the answer's spans
// framed in red and labelled with the span's phrase.
void render_video_strip(const std::filesystem::path& video, const grounding::Mentions& mentions,
                        const std::filesystem::path& out, int64_t frames = 8);

}  // namespace lego::cli
