#include "lego/model/released_defaults.h"

#include <algorithm>

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

}  // namespace lego
