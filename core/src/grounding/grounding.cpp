#include "lego/grounding/grounding.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <regex>

namespace lego::grounding {
namespace {

double clip01(double v) { return std::clamp(v, 0.0, 1.0); }

double round_to(double v, int decimals) {
  const double scale = std::pow(10.0, decimals);
  return std::round(v * scale) / scale;
}

// Number as models write it: optional sign, digits with an optional fraction, or a bare fraction.
const char* kNumber = R"(\s*([-+]?(?:\d+(?:\.\d*)?|\.\d+))\s*)";

std::string trim(std::string_view s) {
  const auto b = s.find_first_not_of(" \t\r\n");
  if (b == std::string_view::npos) return "";
  const auto e = s.find_last_not_of(" \t\r\n");
  return std::string(s.substr(b, e - b + 1));
}

// Only separators between two mentions: they then share a phrase.
bool only_separators(std::string_view s) {
  std::string rest = trim(s);
  while (!rest.empty()) {
    if (rest.front() == ',' || rest.front() == ';') {
      rest = trim(std::string_view(rest).substr(1));
    } else if (rest.rfind("and", 0) == 0 && (rest.size() == 3 || rest[3] == ' ')) {
      rest = trim(std::string_view(rest).substr(3));
    } else {
      return false;
    }
  }
  return true;
}

// The phrase of a mention starting at `begin`: text since the previous mention or sentence boundary.
std::string phrase_before(std::string_view text, size_t from, size_t begin) {
  std::string_view gap = text.substr(from, begin - from);
  const auto cut = gap.find_last_of(".!?\n");
  // A '.' inside a number ("3.5") is no boundary; mentions end at their bracket, so this is rare.
  if (cut != std::string_view::npos) gap = gap.substr(cut + 1);
  std::string p = trim(gap);
  while (!p.empty() && (p.back() == ',' || p.back() == ':' || p.back() == ';')) p = trim(p.substr(0, p.size() - 1));
  return p;
}

}  // namespace

std::string format_box(const Box& b) {
  char buf[96];
  std::snprintf(buf, sizeof buf, "[%.3f, %.3f, %.3f, %.3f]", b.x1, b.y1, b.x2, b.y2);
  return buf;
}

std::string format_span(const Span& s) {
  char buf[48];
  std::snprintf(buf, sizeof buf, "{%.2f, %.2f}", s.t1, s.t2);
  return buf;
}

Mentions parse(std::string_view text) {
  static const std::regex box_re(std::string(R"(\[)") + kNumber + "," + kNumber + "," + kNumber + "," + kNumber + R"(\])");
  static const std::regex span_re(std::string(R"(\{)") + kNumber + "," + kNumber + R"(\})");
  struct Hit {
    size_t begin, end;
    bool is_box;
    double v[4];
  };
  std::vector<Hit> hits;
  const std::string s(text);
  for (auto it = std::sregex_iterator(s.begin(), s.end(), box_re); it != std::sregex_iterator(); ++it) {
    const auto& m = *it;
    hits.push_back({static_cast<size_t>(m.position()), static_cast<size_t>(m.position() + m.length()), true,
                    {std::stod(m[1]), std::stod(m[2]), std::stod(m[3]), std::stod(m[4])}});
  }
  for (auto it = std::sregex_iterator(s.begin(), s.end(), span_re); it != std::sregex_iterator(); ++it) {
    const auto& m = *it;
    hits.push_back({static_cast<size_t>(m.position()), static_cast<size_t>(m.position() + m.length()), false,
                    {std::stod(m[1]), std::stod(m[2]), 0, 0}});
  }
  std::sort(hits.begin(), hits.end(), [](const Hit& a, const Hit& b) { return a.begin < b.begin; });

  Mentions out;
  size_t prev_end = 0;
  std::string prev_phrase;
  bool have_prev = false;
  for (const auto& h : hits) {
    std::string phrase;
    if (have_prev && only_separators(text.substr(prev_end, h.begin - prev_end))) {
      phrase = prev_phrase;
    } else {
      phrase = phrase_before(text, prev_end, h.begin);
    }
    if (h.is_box) {
      Box b{clip01(std::min(h.v[0], h.v[2])), clip01(std::min(h.v[1], h.v[3])), clip01(std::max(h.v[0], h.v[2])),
            clip01(std::max(h.v[1], h.v[3]))};
      out.boxes.push_back({phrase, b, h.begin, h.end});
    } else {
      Span sp{clip01(std::min(h.v[0], h.v[1])), clip01(std::max(h.v[0], h.v[1]))};
      out.spans.push_back({phrase, sp, h.begin, h.end});
    }
    prev_end = h.end;
    prev_phrase = phrase;
    have_prev = true;
  }
  return out;
}

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
