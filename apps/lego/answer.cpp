#include "answer.h"

namespace lego::cli {

nlohmann::json grounding_json(const Grounding& g) {
  auto medium = [](int i) { return i >= 0 ? nlohmann::json(i) : nlohmann::json(nullptr); };
  auto boxes = nlohmann::json::array();
  for (const auto& b : g.boxes) {
    nlohmann::json j = {{"phrase", b.mention.phrase}, {"box_square", b.mention.values}, {"medium", medium(b.medium)}};
    if (b.mapped) {
      j["box"] = b.mapped->relative;
      j["box_" + b.mapped->unit] = b.mapped->absolute;
    } else {
      j["box"] = b.mention.values;
      j["box_px"] = nullptr;
    }
    boxes.push_back(j);
  }
  auto spans = nlohmann::json::array();
  for (const auto& s : g.spans) {
    nlohmann::json j = {{"phrase", s.mention.phrase}, {"span", {s.mention.span.t1, s.mention.span.t2}},
                        {"medium", medium(s.medium)}};
    j["seconds"] = s.mapped ? nlohmann::json({s.mapped->start_s, s.mapped->end_s}) : nlohmann::json(nullptr);
    spans.push_back(j);
  }
  return {{"boxes", boxes}, {"spans", spans}};
}

}  // namespace lego::cli
