#include "lego/model/released_defaults.h"

#include <algorithm>
#include <map>

#include "lego/sdk/error.h"

namespace lego {

const std::vector<std::string>& released_media_order() {
  static const std::vector<std::string> order = {"sound", "video", "image"};
  return order;
}

std::vector<std::string> media_order_for(const std::vector<std::string>& modalities) {
  std::vector<std::string> out;
  for (const auto& name : released_media_order()) {
    if (std::find(modalities.begin(), modalities.end(), name) != modalities.end()) out.push_back(name);
  }
  for (const auto& name : modalities) {
    if (std::find(out.begin(), out.end(), name) == out.end()) out.push_back(name);
  }
  return out;
}

const std::vector<ReleasedMedium>& released_media() {
  static const std::vector<ReleasedMedium> media = {{"image", "<image>"}, {"video", "<video>"}, {"sound", "<sound>"}};
  return media;
}

const std::vector<ReleasedMedium>& released_media_of_source(std::string_view source) {
  const auto& m = released_media();
  const auto& image = m[0];
  const auto& video = m[1];
  const auto& sound = m[2];
  // The stage files the paper trains on (reference section 8): RefCOCO, Visual Genome and LLaVA pictures;
  // Charades-STA, DiDeMo and ActivityNet videos; Clotho and WavCaps sounds; VGGSS frames with their sound.
  static const std::map<std::string, std::vector<ReleasedMedium>, std::less<>> by_source = {
      {"refcoco", {image}}, {"refcoco+", {image}}, {"refcocog", {image}}, {"vg-regions", {image}},
      {"llava", {image}}, {"charades-sta", {video}}, {"didemo", {video}}, {"activitynet-captions", {video}},
      {"clotho", {sound}}, {"wavcaps", {sound}}, {"vggss", {image, sound}}};
  const auto it = by_source.find(source);
  if (it == by_source.end()) {
    throw Error(ErrorKind::InvalidArgument, "no released medium is known for the source '" + std::string(source) + "'");
  }
  return it->second;
}

const std::string& didemo_clip_field() {
  static const std::string field = "video";
  return field;
}

}  // namespace lego
