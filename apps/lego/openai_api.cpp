#include "openai_api.h"

#include <array>
#include <cmath>
#include <fstream>
#include <map>

#include "answer.h"

namespace lego::cli::api {
namespace {

using nlohmann::json;

[[noreturn]] void bad(const std::string& param, const std::string& message) { throw ApiError(400, param, param + ": " + message); }

const json& field(const json& obj, const char* key, const std::string& param) {
  auto it = obj.find(key);
  if (it == obj.end()) bad(param.empty() ? std::string(key) : param + "." + key, "is required");
  return *it;
}

std::string string_at(const json& v, const std::string& param) {
  if (!v.is_string()) bad(param, "must be a string");
  return v.get<std::string>();
}

double number_at(const json& v, const std::string& param, double lo, double hi) {
  if (!v.is_number()) bad(param, "must be a number");
  const double x = v.get<double>();
  if (!std::isfinite(x) || x < lo || x > hi) bad(param, "must be between " + json(lo).dump() + " and " + json(hi).dump());
  return x;
}

int64_t integer_at(const json& v, const std::string& param, int64_t lo, int64_t hi) {
  if (!v.is_number_integer()) bad(param, "must be an integer");
  const auto x = v.is_number_unsigned() ? static_cast<int64_t>(std::min<uint64_t>(v.get<uint64_t>(), INT64_MAX)) : v.get<int64_t>();
  if (x < lo || x > hi) bad(param, "must be between " + std::to_string(lo) + " and " + std::to_string(hi));
  return x;
}

// File extensions of the MIME types a data URL may carry; a modality is then chosen by extension.
const std::map<std::string, std::string>& mime_extensions() {
  static const std::map<std::string, std::string> m = {
      {"image/png", "png"},         {"image/jpeg", "jpg"},   {"image/jpg", "jpg"},       {"image/webp", "webp"},
      {"image/bmp", "bmp"},         {"image/tiff", "tiff"},  {"video/mp4", "mp4"},       {"video/webm", "webm"},
      {"video/x-matroska", "mkv"},  {"video/quicktime", "mov"}, {"video/x-msvideo", "avi"}, {"video/avi", "avi"},
      {"audio/wav", "wav"},         {"audio/x-wav", "wav"},  {"audio/wave", "wav"},      {"audio/mpeg", "mp3"},
      {"audio/mp3", "mp3"},         {"audio/flac", "flac"},  {"audio/ogg", "ogg"},       {"audio/mp4", "m4a"}};
  return m;
}

const std::array<const char*, 6> kAudioFormats = {"wav", "mp3", "flac", "ogg", "m4a", "webm"};

struct Medium {
  std::string extension;
  std::string bytes;
  std::string top_type;
};

// data:<mime>;base64,<data>, where <mime> starts with `kind` ("image/", "video/").
Medium from_data_url(const std::string& url, const std::string& kind, const std::string& param, uint64_t max_bytes) {
  if (url.rfind("data:", 0) != 0) {
    bad(param, "only data URLs (data:" + kind + "...;base64,...) are accepted; the server fetches nothing and reads no paths");
  }
  const auto comma = url.find(',');
  if (comma == std::string::npos) bad(param, "a data URL needs a ',' before its data");
  const std::string head = url.substr(5, comma - 5);
  const auto semi = head.find(';');
  std::string mime = head.substr(0, semi);
  for (auto& c : mime) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (semi == std::string::npos || head.substr(semi) != ";base64") bad(param, "the data URL must be base64 (data:TYPE;base64,...)");
  if (mime.rfind(kind, 0) != 0) bad(param, "the data URL's type is '" + mime + "', not " + kind + "*");
  auto it = mime_extensions().find(mime);
  if (it == mime_extensions().end()) bad(param, "unsupported media type '" + mime + "'");
  return {it->second, decode_base64(url.substr(comma + 1), max_bytes, param), mime.substr(0, mime.find('/'))};
}

std::string join_text(const std::vector<std::string>& parts) {
  std::string out;
  for (const auto& p : parts) {
    if (!out.empty()) out += "\n";
    out += p;
  }
  return out;
}

}  // namespace

json error_body(const std::string& message, const std::string& type, const std::string& param) {
  return {{"error", {{"message", message}, {"type", type}, {"param", param.empty() ? json(nullptr) : json(param)}, {"code", nullptr}}}};
}

std::string decode_base64(const std::string& text, uint64_t max_bytes, const std::string& param) {
  if (text.size() % 4 != 0) bad(param, "base64 data must be a multiple of 4 characters long");
  if (text.size() / 4 * 3 > max_bytes + 2) {
    throw ApiError(413, param, param + ": the medium is over the upload limit of " + std::to_string(max_bytes) + " bytes");
  }
  static const auto table = [] {
    std::array<int8_t, 256> t{};
    t.fill(-1);
    const char* alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for (int i = 0; i < 64; ++i) t[static_cast<unsigned char>(alphabet[i])] = static_cast<int8_t>(i);
    return t;
  }();
  std::string out;
  out.reserve(text.size() / 4 * 3);
  for (size_t i = 0; i < text.size(); i += 4) {
    int v[4];
    int pad = 0;
    for (int k = 0; k < 4; ++k) {
      const auto c = static_cast<unsigned char>(text[i + k]);
      if (c == '=' && i + 4 == text.size() && k >= 2) {
        v[k] = 0;
        ++pad;
      } else if (pad > 0 || table[c] < 0) {
        bad(param, "is not valid base64 (character " + std::to_string(i + k) + ")");
      } else {
        v[k] = table[c];
      }
    }
    const uint32_t n = (v[0] << 18) | (v[1] << 12) | (v[2] << 6) | v[3];
    out.push_back(static_cast<char>(n >> 16));
    if (pad < 2) out.push_back(static_cast<char>((n >> 8) & 0xff));
    if (pad < 1) out.push_back(static_cast<char>(n & 0xff));
  }
  if (out.empty()) bad(param, "holds no data");
  if (out.size() > max_bytes) {
    throw ApiError(413, param, param + ": the medium is over the upload limit of " + std::to_string(max_bytes) + " bytes");
  }
  return out;
}

ChatRequest parse_chat_request(const std::string& body, const std::filesystem::path& folder, const Limits& limits) {
  json j;
  try {
    j = json::parse(body);
  } catch (const json::parse_error& e) {
    throw ApiError(400, "", "the body is not valid JSON (at byte " + std::to_string(e.byte) + ")");
  } catch (const json::exception&) {
    throw ApiError(400, "", "the body is not valid JSON");
  }
  if (!j.is_object()) throw ApiError(400, "", "the body must be a JSON object");
  ChatRequest out;
  auto& r = out.request;
  r.sampling.max_new_tokens = limits.max_tokens;
  if (auto it = j.find("stream"); it != j.end() && !it->is_null()) {
    if (!it->is_boolean()) bad("stream", "must be a boolean");
    out.stream = it->get<bool>();
  }
  if (auto it = j.find("stream_options"); it != j.end() && !it->is_null()) {
    if (!it->is_object()) bad("stream_options", "must be an object");
    if (auto u = it->find("include_usage"); u != it->end()) {
      if (!u->is_boolean()) bad("stream_options.include_usage", "must be a boolean");
      out.include_usage = u->get<bool>();
    }
  }
  if (auto it = j.find("temperature"); it != j.end() && !it->is_null()) {
    r.sampling.temperature = number_at(*it, "temperature", 0, 2);
    if (r.sampling.temperature > 0 && r.sampling.temperature < 1e-6) bad("temperature", "must be 0 (greedy) or at least 1e-6");
  }
  if (auto it = j.find("top_p"); it != j.end() && !it->is_null()) {
    r.sampling.top_p = number_at(*it, "top_p", 0, 1);
    if (r.sampling.top_p == 0) bad("top_p", "must be greater than 0");
  }
  for (const char* key : {"max_tokens", "max_completion_tokens"}) {
    if (auto it = j.find(key); it != j.end() && !it->is_null()) r.sampling.max_new_tokens = integer_at(*it, key, 1, limits.max_tokens);
  }
  if (auto it = j.find("seed"); it != j.end() && !it->is_null()) {
    r.sampling.seed = static_cast<uint64_t>(integer_at(*it, "seed", INT64_MIN, INT64_MAX));
  }
  if (auto it = j.find("n"); it != j.end() && !it->is_null() && integer_at(*it, "n", 1, 1) != 1) bad("n", "must be 1");
  if (auto it = j.find("stop"); it != j.end() && !it->is_null()) {
    if (it->is_string()) {
      r.sampling.stop.push_back(it->get<std::string>());
    } else if (it->is_array()) {
      if (it->size() > 4) bad("stop", "holds at most 4 strings");
      for (size_t i = 0; i < it->size(); ++i) r.sampling.stop.push_back(string_at((*it)[i], "stop[" + std::to_string(i) + "]"));
    } else {
      bad("stop", "must be a string or an array of strings");
    }
    for (const auto& s : r.sampling.stop) {
      if (s.empty()) bad("stop", "must not hold an empty string");
    }
  }
  if (auto it = j.find("model"); it != j.end() && !it->is_null()) string_at(*it, "model");

  const auto& messages = field(j, "messages", "");
  if (!messages.is_array() || messages.empty()) bad("messages", "must be a non-empty array");
  std::vector<std::pair<std::string, std::string>> turns;  // (role, text) of user/assistant messages
  int media_count = 0;
  uint64_t media_bytes = 0;
  for (size_t m = 0; m < messages.size(); ++m) {
    const std::string mp = "messages[" + std::to_string(m) + "]";
    const auto& msg = messages[m];
    if (!msg.is_object()) bad(mp, "must be an object");
    const std::string role = string_at(field(msg, "role", mp), mp + ".role");
    if (role != "system" && role != "user" && role != "assistant") bad(mp + ".role", "must be system, user or assistant");
    const bool last = m + 1 == messages.size();
    const auto& content = field(msg, "content", mp);
    std::vector<std::string> texts;
    if (content.is_string()) {
      texts.push_back(content.get<std::string>());
    } else if (content.is_array()) {
      for (size_t p = 0; p < content.size(); ++p) {
        const std::string pp = mp + ".content[" + std::to_string(p) + "]";
        const auto& part = content[p];
        if (!part.is_object()) bad(pp, "must be an object");
        const std::string type = string_at(field(part, "type", pp), pp + ".type");
        if (type == "text") {
          texts.push_back(string_at(field(part, "text", pp), pp + ".text"));
          continue;
        }
        if (type != "image_url" && type != "video_url" && type != "input_audio") {
          bad(pp + ".type", "must be text, image_url, video_url or input_audio");
        }
        if (role != "user" || !last) bad(pp, "media are read from the last message only, which must be the user's");
        if (++media_count > limits.max_media) bad(pp, "more than " + std::to_string(limits.max_media) + " media in one request");
        Medium medium;
        if (type == "input_audio") {
          const auto& a = field(part, "input_audio", pp);
          if (!a.is_object()) bad(pp + ".input_audio", "must be an object");
          std::string format = string_at(field(a, "format", pp + ".input_audio"), pp + ".input_audio.format");
          if (std::find(kAudioFormats.begin(), kAudioFormats.end(), format) == kAudioFormats.end()) {
            bad(pp + ".input_audio.format", "must be one of wav, mp3, flac, ogg, m4a, webm");
          }
          medium = {format, decode_base64(string_at(field(a, "data", pp + ".input_audio"), pp + ".input_audio.data"),
                                          limits.max_media_bytes, pp + ".input_audio.data"), "audio"};
        } else {
          const auto& u = field(part, type.c_str(), pp);
          const std::string up = pp + "." + type + ".url";
          const std::string url = u.is_string() ? u.get<std::string>() : string_at(field(u, "url", pp + "." + type), up);
          medium = from_data_url(url, type == "image_url" ? "image/" : "video/", up, limits.max_media_bytes);
        }
        media_bytes += medium.bytes.size();
        if (media_bytes > limits.max_media_bytes) {
          throw ApiError(413, pp, pp + ": the request's media are over the upload limit of " + std::to_string(limits.max_media_bytes) + " bytes");
        }
        const auto path = folder / ("medium-" + std::to_string(media_count) + "." + medium.extension);
        std::ofstream f(path, std::ios::binary);
        f.write(medium.bytes.data(), static_cast<std::streamsize>(medium.bytes.size()));
        if (!f.flush()) throw ApiError(500, pp, pp + ": the server could not store the medium");
        r.media.push_back({"", path});
        std::string modality;
        if (auto it = part.find("modality"); it != part.end() && !it->is_null()) modality = string_at(*it, pp + ".modality");
        const std::string param = type == "input_audio" ? pp + ".input_audio.data" : pp + "." + type + ".url";
        out.sources.push_back({param, medium.top_type, modality});
      }
    } else {
      bad(mp + ".content", "must be a string or an array of content parts");
    }
    const std::string text = join_text(texts);
    if (role == "system") {
      if (!turns.empty()) bad(mp, "a system message must come before the conversation");
      r.system = text;
    } else {
      turns.emplace_back(role, text);
    }
  }
  if (turns.empty() || turns.back().first != "user") bad("messages", "the last message must be the user's");
  for (size_t i = 0; i + 1 < turns.size(); i += 2) {
    if (turns[i].first != "user" || turns[i + 1].first != "assistant") {
      bad("messages", "earlier messages must alternate user, assistant");
    }
    r.history.push_back({turns[i].second, turns[i + 1].second});
  }
  if (turns.size() % 2 == 0) bad("messages", "earlier messages must alternate user, assistant");
  r.message = turns.back().second;
  return out;
}

void choose_modalities(ChatRequest& chat, const Pipeline& pipeline) {
  const auto& names = pipeline.media_order();
  for (size_t i = 0; i < chat.request.media.size(); ++i) {
    auto& medium = chat.request.media[i];
    const auto& source = chat.sources.at(i);
    const std::string param = source.param.substr(0, source.param.rfind('.', source.param.rfind('.') - 1));
    if (!source.modality.empty()) {
      if (std::find(names.begin(), names.end(), source.modality) == names.end()) {
        throw ApiError(400, param + ".modality", param + ".modality: the model has no modality '" + source.modality + "'");
      }
      medium.modality = source.modality;
      continue;
    }
    const auto readers = pipeline.readers(medium.path);
    std::string list;
    for (const auto& r : readers) list += (list.empty() ? "" : ", ") + r;
    if (readers.size() == 1) {
      medium.modality = readers.front();
    } else if (std::find(readers.begin(), readers.end(), source.top_type) != readers.end()) {
      medium.modality = source.top_type;
    } else if (readers.empty()) {
      bad(source.param, "no modality of the model reads ." + medium.path.extension().string().substr(1) + " files");
    } else {
      throw ApiError(400, param + ".modality", param + ": several modalities of the model read this file type (" + list +
                                                   "); name one in the part's \"modality\" field");
    }
  }
}

std::string finish_reason(const std::string& reason) {
  return reason == "length" || reason == "context" ? "length" : "stop";
}

json completion(const std::string& id, int64_t created, const std::string& model, const Answer& a) {
  const auto prompt = static_cast<int64_t>(a.prompt_ids.size());
  const auto completion_tokens = static_cast<int64_t>(a.output.token_ids.size());
  return {{"id", id},
          {"object", "chat.completion"},
          {"created", created},
          {"model", model},
          {"choices", json::array({{{"index", 0},
                                    {"message", {{"role", "assistant"}, {"content", a.output.text}}},
                                    {"finish_reason", finish_reason(a.output.finish_reason)},
                                    {"logprobs", nullptr}}})},
          {"usage", {{"prompt_tokens", prompt}, {"completion_tokens", completion_tokens}, {"total_tokens", prompt + completion_tokens}}},
          {"grounding", grounding_json(a.grounding)}};
}

json chunk(const std::string& id, int64_t created, const std::string& model, const std::string& delta, bool first,
           const Answer* a) {
  json d = json::object();
  if (first) d["role"] = "assistant";
  if (!delta.empty() || first) d["content"] = delta;
  json choice = {{"index", 0}, {"delta", d}, {"finish_reason", nullptr}, {"logprobs", nullptr}};
  json out = {{"id", id}, {"object", "chat.completion.chunk"}, {"created", created}, {"model", model}};
  if (a != nullptr) {
    choice["finish_reason"] = finish_reason(a->output.finish_reason);
    out["grounding"] = grounding_json(a->grounding);
  }
  out["choices"] = json::array({choice});
  return out;
}

}  // namespace lego::cli::api
