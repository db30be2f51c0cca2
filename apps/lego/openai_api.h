// The OpenAI chat-completions format of `lego serve` (docs/serve.md): a request body to a lego Request
// with its media decoded from data URLs, and a finished answer to a reply or its stream's chunks.
//
// The server never reads a path from a request: media arrive as data URLs (`image_url`, `video_url`) or
// base64 (`input_audio`), are written into the server's own folder under names it chooses, and are routed to
// a modality by the extension their MIME type gives. A bad field is an ApiError naming it.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <vector>

#include "lego/pipeline/pipeline.h"

namespace lego::cli::api {

// A request the server refuses: HTTP `status`, the field (`param`, as "messages[0].content[1].image_url.url")
// and a message; the reply's body is error_body().
struct ApiError : std::runtime_error {
  ApiError(int status, std::string param, const std::string& message)
      : std::runtime_error(message), status(status), param(std::move(param)) {}
  int status;
  std::string param;
};
nlohmann::json error_body(const std::string& message, const std::string& type, const std::string& param);

struct Limits {
  uint64_t max_media_bytes = 32ull << 20;  // a request's media in total, decoded
  int64_t max_tokens = 512;                // default and cap of max_tokens
  int max_media = 8;                       // media per request
};

// How one medium of a request was given, for choosing its modality (choose_modalities).
struct MediumSource {
  std::string param;     // "messages[1].content[0].image_url.url"
  std::string top_type;  // the top level of the MIME type (image/png: image)
  std::string modality;  // the part's own "modality" field, or ""
};

struct ChatRequest {
  Request request;          // media paths inside the request's folder; modalities chosen by choose_modalities
  std::vector<MediumSource> sources;  // one per medium
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage
};

// Parses a /v1/chat/completions body; media go into `folder` (which must exist). Throws ApiError.
ChatRequest parse_chat_request(const std::string& body, const std::filesystem::path& folder, const Limits& limits);

// Names each medium's modality: the part's `modality` field when given (a modality of the model), else the one
// modality that reads its file type, else among several such the one named like the MIME type's top level
// (`video/mp4` read by a sound and a video modality goes to the one called video). Throws ApiError otherwise.
void choose_modalities(ChatRequest& chat, const Pipeline& pipeline);

// Strict base64 (standard alphabet, '=' padding, no whitespace); throws ApiError(400, param) otherwise or when
// the decoded size would pass `max_bytes` (checked before anything is allocated).
std::string decode_base64(const std::string& text, uint64_t max_bytes, const std::string& param);

// "stop" for eos and stop strings, "length" for max_tokens and the context.
std::string finish_reason(const std::string& lego_reason);

// The non-streamed reply: id, object, created, model, choices, usage, and `grounding` as `lego infer --json`
// writes it ({boxes, spans}).
nlohmann::json completion(const std::string& id, int64_t created, const std::string& model, const Answer& answer);
// One chunk of a streamed reply: a text delta, or (with `answer`) the last chunk with finish_reason and grounding.
nlohmann::json chunk(const std::string& id, int64_t created, const std::string& model, const std::string& delta,
                     bool first, const Answer* answer = nullptr);

}  // namespace lego::cli::api
