#include "lego/sdk/grounding.h"

#include <algorithm>
#include <cmath>

namespace lego::grounding {
namespace {

double clip01(double v) { return std::clamp(v, 0.0, 1.0); }

double round_to(double v, int decimals) {
  const double scale = std::pow(10.0, decimals);
  return std::round(v * scale) / scale;
}

}  // namespace

Box unpad_box(const Box& sq, int64_t width, int64_t height) {
  const double side = static_cast<double>(std::max(width, height));
  const double pad_x = width < height ? static_cast<double>((height - width) / 2) : 0.0;
  const double pad_y = height < width ? static_cast<double>((width - height) / 2) : 0.0;
  // As the released code: whole square pixels first (round half to even, Python's round), then unpad.
  auto x = [&](double v) { return clip01(round_to((std::nearbyint(v * side) - pad_x) / static_cast<double>(width), 3)); };
  auto y = [&](double v) { return clip01(round_to((std::nearbyint(v * side) - pad_y) / static_cast<double>(height), 3)); };
  return {x(sq.x1), y(sq.y1), x(sq.x2), y(sq.y2)};
}

Box pad_box(const Box& o, int64_t width, int64_t height) {
  const double side = static_cast<double>(std::max(width, height));
  const double pad_x = width < height ? static_cast<double>((height - width) / 2) : 0.0;
  const double pad_y = height < width ? static_cast<double>((width - height) / 2) : 0.0;
  auto x = [&](double v) { return round_to((v * static_cast<double>(width) + pad_x) / side, 3); };
  auto y = [&](double v) { return round_to((v * static_cast<double>(height) + pad_y) / side, 3); };
  return {x(o.x1), y(o.y1), x(o.x2), y(o.y2)};
}

Box to_pixels(const Box& r, int64_t width, int64_t height) {
  const auto w = static_cast<double>(width), h = static_cast<double>(height);
  return {r.x1 * w, r.y1 * h, r.x2 * w, r.y2 * h};
}

double iou(const Box& a, const Box& b) {
  const double iw = std::max(0.0, std::min(a.x2, b.x2) - std::max(a.x1, b.x1));
  const double ih = std::max(0.0, std::min(a.y2, b.y2) - std::max(a.y1, b.y1));
  const double inter = iw * ih;
  const double uni = (a.x2 - a.x1) * (a.y2 - a.y1) + (b.x2 - b.x1) * (b.y2 - b.y1) - inter;
  return uni > 0 ? inter / uni : 0.0;
}

double iou(const Span& a, const Span& b) {
  const double inter = std::max(0.0, std::min(a.t2, b.t2) - std::max(a.t1, b.t1));
  const double uni = (a.t2 - a.t1) + (b.t2 - b.t1) - inter;
  return uni > 0 ? inter / uni : 0.0;
}

}  // namespace lego::grounding
