#include "lego/sdk/io/synth_draw.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <numbers>
#include <string>

#include "lego/sdk/error.h"
#include "lego/sdk/io/synth_random.h"

namespace lego::io {
namespace {

using synth::Scene;

// Sub-rows per pixel row: the vertical anti-aliasing (horizontal coverage is exact).
constexpr int kSubRows = 4;
// A regular 5-pointed star's inner radius over its outer one: sin(18 deg) / sin(126 deg).
constexpr double kStarInnerRatio = 0.38196601125;

[[noreturn]] void refuse(const std::string& field, const std::string& what) {
  throw Error(ErrorKind::InvalidArgument, "scene." + field + ": " + what);
}

void check_unit(double v, const std::string& field) {
  if (!std::isfinite(v) || v < 0 || v > 1) refuse(field, std::to_string(v) + " is not a finite number in [0, 1]");
}

void check_colour(int c, const std::string& field) {
  if (c < 0 || c >= synth::kColours) {
    refuse(field, std::to_string(c) + " is not a palette index (0.." + std::to_string(synth::kColours - 1) + ")");
  }
}

struct Point {
  double x, y;
};

// An object's outline in pixels: a circle (radius > 0, no vertices) or a polygon.
struct Outline {
  double cx = 0, cy = 0, radius = 0;
  std::vector<Point> polygon;
};

Outline outline(const Scene& scene, const synth::Object& o, const ObjectState& s) {
  const double w = scene.width, h = scene.height;
  const double side = o.size * std::min(w, h);
  Outline out;
  out.cx = s.cx * w;
  out.cy = s.cy * h;
  auto ring = [&](int n, double start, auto radius_of) {
    for (int k = 0; k < n; ++k) {
      const double a = start + o.angle + 2 * std::numbers::pi * k / n;
      const double r = radius_of(k);
      out.polygon.push_back({out.cx + r * std::cos(a), out.cy + r * std::sin(a)});
    }
  };
  const double up = -std::numbers::pi / 2;
  switch (o.shape) {
    case synth::Shape::Circle:
      out.radius = side / 2;
      break;
    case synth::Shape::Square:
      ring(4, -std::numbers::pi * 3 / 4, [&](int) { return side / std::numbers::sqrt2; });
      break;
    case synth::Shape::Triangle:  // equilateral, `side` long, centred on its centroid
      ring(3, up, [&](int) { return side / std::sqrt(3.0); });
      break;
    case synth::Shape::Star:  // 5 points on the circle of diameter `side`
      ring(10, up, [&](int k) { return k % 2 == 0 ? side / 2 : side / 2 * kStarInnerRatio; });
      break;
  }
  return out;
}

PixelBox extent(const Outline& o) {
  if (o.polygon.empty()) return {o.cx - o.radius, o.cy - o.radius, o.cx + o.radius, o.cy + o.radius};
  PixelBox b{o.polygon[0].x, o.polygon[0].y, o.polygon[0].x, o.polygon[0].y};
  for (const auto& p : o.polygon) {
    b.x1 = std::min(b.x1, p.x), b.y1 = std::min(b.y1, p.y);
    b.x2 = std::max(b.x2, p.x), b.y2 = std::max(b.y2, p.y);
  }
  return b;
}

std::optional<PixelBox> clipped(PixelBox b, int width, int height) {
  b.x1 = std::clamp(b.x1, 0.0, static_cast<double>(width));
  b.x2 = std::clamp(b.x2, 0.0, static_cast<double>(width));
  b.y1 = std::clamp(b.y1, 0.0, static_cast<double>(height));
  b.y2 = std::clamp(b.y2, 0.0, static_cast<double>(height));
  if (b.x2 <= b.x1 || b.y2 <= b.y1) return std::nullopt;
  return b;
}

// The intervals of the line at height y inside the outline (even-odd), unsorted for a circle's one.
void spans_at(const Outline& o, double y, std::vector<double>& xs) {
  xs.clear();
  if (o.polygon.empty()) {
    const double dy = y - o.cy;
    if (std::abs(dy) >= o.radius) return;
    const double dx = std::sqrt(o.radius * o.radius - dy * dy);
    xs = {o.cx - dx, o.cx + dx};
    return;
  }
  const size_t n = o.polygon.size();
  for (size_t i = 0; i < n; ++i) {
    const Point& p = o.polygon[i];
    const Point& q = o.polygon[(i + 1) % n];
    if ((p.y <= y && y < q.y) || (q.y <= y && y < p.y)) xs.push_back(p.x + (y - p.y) * (q.x - p.x) / (q.y - p.y));
  }
  std::sort(xs.begin(), xs.end());
}

// Blends `rgb` over `image` with the outline's coverage of each pixel.
void fill(uint8_t* image, int width, int height, const Outline& o, const std::array<uint8_t, 3>& rgb) {
  const auto box = clipped(extent(o), width, height);
  if (!box) return;
  const int x0 = static_cast<int>(std::floor(box->x1)), x1 = static_cast<int>(std::ceil(box->x2));
  const int y0 = static_cast<int>(std::floor(box->y1)), y1 = static_cast<int>(std::ceil(box->y2));
  std::vector<double> coverage(static_cast<size_t>(x1 - x0));
  std::vector<double> xs;
  for (int row = y0; row < y1; ++row) {
    std::fill(coverage.begin(), coverage.end(), 0.0);
    for (int k = 0; k < kSubRows; ++k) {
      spans_at(o, row + (k + 0.5) / kSubRows, xs);
      for (size_t i = 0; i + 1 < xs.size(); i += 2) {
        const double a = std::max(xs[i], static_cast<double>(x0)), b = std::min(xs[i + 1], static_cast<double>(x1));
        if (b <= a) continue;
        for (int px = static_cast<int>(std::floor(a)); px < static_cast<int>(std::ceil(b)); ++px) {
          coverage[static_cast<size_t>(px - x0)] += (std::min(b, px + 1.0) - std::max(a, static_cast<double>(px))) / kSubRows;
        }
      }
    }
    uint8_t* line = image + (static_cast<size_t>(row) * static_cast<size_t>(width) + static_cast<size_t>(x0)) * 3;
    for (int px = x0; px < x1; ++px, line += 3) {
      const double a = std::min(1.0, coverage[static_cast<size_t>(px - x0)]);
      if (a <= 0) continue;
      for (int c = 0; c < 3; ++c) line[c] = static_cast<uint8_t>(std::lround(line[c] * (1 - a) + rgb[c] * a));
    }
  }
}

// The background: one colour, a linear gradient at a seeded angle, or a seeded texture (stripes, checks or
// smooth value noise) mixing the two colours.
void paint_background(uint8_t* image, const Scene& scene) {
  const int w = scene.width, h = scene.height;
  SceneRandom rng(scene.seed, SceneRandom::kBackground);
  const auto& c1 = scene.background_rgb;
  const auto& c2 = scene.background_rgb2;
  auto put = [&](int x, int y, double mix) {
    uint8_t* p = image + (static_cast<size_t>(y) * static_cast<size_t>(w) + static_cast<size_t>(x)) * 3;
    for (int c = 0; c < 3; ++c) p[c] = static_cast<uint8_t>(std::lround(c1[c] * (1 - mix) + c2[c] * mix));
  };
  auto each_pixel = [&](auto mix_at) {
    for (int y = 0; y < h; ++y) {
      for (int x = 0; x < w; ++x) put(x, y, std::clamp(mix_at(x + 0.5, y + 0.5), 0.0, 1.0));
    }
  };
  switch (scene.background) {
    case synth::Background::Plain:
      each_pixel([](double, double) { return 0.0; });
      break;
    case synth::Background::Gradient: {
      const double angle = 2 * std::numbers::pi * rng.uniform();
      const double ca = std::cos(angle), sa = std::sin(angle);
      const double half = (std::abs(w * ca) + std::abs(h * sa)) / 2;
      each_pixel([&](double x, double y) { return ((x - w / 2.0) * ca + (y - h / 2.0) * sa) / half / 2 + 0.5; });
      break;
    }
    case synth::Background::Texture: {
      const int pattern = rng.below(3);
      const double cell = 6 + rng.uniform() * 18;  // pixels
      if (pattern == 0) {  // soft stripes at a seeded angle
        const double angle = std::numbers::pi * rng.uniform();
        const double ca = std::cos(angle), sa = std::sin(angle);
        each_pixel([&](double x, double y) { return 0.5 + 0.5 * std::sin(2 * std::numbers::pi * (x * ca + y * sa) / cell); });
      } else if (pattern == 1) {  // checks
        each_pixel([&](double x, double y) {
          return static_cast<double>((static_cast<int64_t>(std::floor(x / cell)) + static_cast<int64_t>(std::floor(y / cell))) & 1);
        });
      } else {  // value noise: random levels on a grid, smoothly interpolated
        const int gw = static_cast<int>(w / cell) + 2, gh = static_cast<int>(h / cell) + 2;
        std::vector<double> grid(static_cast<size_t>(gw) * static_cast<size_t>(gh));
        for (auto& v : grid) v = rng.uniform();
        auto at = [&](int gx, int gy) { return grid[static_cast<size_t>(gy) * static_cast<size_t>(gw) + static_cast<size_t>(gx)]; };
        auto smooth = [](double f) { return f * f * (3 - 2 * f); };
        each_pixel([&](double x, double y) {
          const double fx = x / cell, fy = y / cell;
          const int gx = static_cast<int>(fx), gy = static_cast<int>(fy);
          const double u = smooth(fx - gx), v = smooth(fy - gy);
          return (at(gx, gy) * (1 - u) + at(gx + 1, gy) * u) * (1 - v) + (at(gx, gy + 1) * (1 - u) + at(gx + 1, gy + 1) * u) * v;
        });
      }
      break;
    }
  }
}

}  // namespace

void check_scene(const Scene& s) {
  auto check_side = [](int v, const char* field) {
    if (v < kMinSceneSide || v > kMaxSceneSide) {
      refuse(field, std::to_string(v) + " pixels is outside " + std::to_string(kMinSceneSide) + ".." + std::to_string(kMaxSceneSide));
    }
  };
  check_side(s.width, "width");
  check_side(s.height, "height");
  if (!std::isfinite(s.duration_s) || s.duration_s < kMinSceneSeconds || s.duration_s > kMaxSceneSeconds) {
    refuse("duration_s", std::to_string(s.duration_s) + " is outside 0.5..600 seconds");
  }
  const int bg = static_cast<int>(s.background);
  if (bg < 0 || bg > static_cast<int>(synth::Background::Texture)) refuse("background", std::to_string(bg) + " is not a background kind");
  if (s.objects.size() > kMaxSceneObjects) {
    refuse("objects", std::to_string(s.objects.size()) + " objects (at most " + std::to_string(kMaxSceneObjects) + ")");
  }
  for (size_t i = 0; i < s.objects.size(); ++i) {
    const auto& o = s.objects[i];
    const std::string f = "objects[" + std::to_string(i) + "].";
    const int shape = static_cast<int>(o.shape);
    if (shape < 0 || shape >= synth::kShapes) refuse(f + "shape", std::to_string(shape) + " is not a shape class");
    check_colour(o.colour, f + "colour");
    if (!std::isfinite(o.size) || o.size <= 0 || o.size > 1) refuse(f + "size", std::to_string(o.size) + " is not in (0, 1]");
    check_unit(o.cx, f + "cx");
    check_unit(o.cy, f + "cy");
    if (!std::isfinite(o.angle)) refuse(f + "angle", "not a finite number");
  }
  if (s.event) {
    const auto& e = *s.event;
    if (e.object < 0 || static_cast<size_t>(e.object) >= s.objects.size()) {
      refuse("event.object", std::to_string(e.object) + " names no object of the scene");
    }
    const int kind = static_cast<int>(e.kind);
    if (kind < 0 || kind > static_cast<int>(synth::EventKind::ChangeColour)) refuse("event.kind", std::to_string(kind) + " is not an event kind");
    check_unit(e.t1, "event.t1");
    check_unit(e.t2, "event.t2");
    if (e.t2 < e.t1) refuse("event.t2", "ends before t1");
    check_unit(e.to_cx, "event.to_cx");
    check_unit(e.to_cy, "event.to_cy");
    check_colour(e.to_colour, "event.to_colour");
  }
  if (s.sounding < -1 || s.sounding >= static_cast<int>(s.objects.size())) {
    refuse("sounding", std::to_string(s.sounding) + " names no object of the scene (-1: none)");
  }
}

std::vector<ObjectState> object_states(const Scene& scene, std::optional<double> t) {
  std::vector<ObjectState> states;
  states.reserve(scene.objects.size());
  for (const auto& o : scene.objects) states.push_back({true, o.cx, o.cy, o.colour});
  if (!t || !scene.event || scene.event->object < 0 || static_cast<size_t>(scene.event->object) >= states.size()) return states;
  const auto& e = *scene.event;
  auto& s = states[static_cast<size_t>(e.object)];
  const bool during = *t >= e.t1 && *t <= e.t2;
  switch (e.kind) {
    case synth::EventKind::Appear:
      s.visible = during;
      break;
    case synth::EventKind::Move: {
      const double f = *t >= e.t2 ? 1.0 : *t <= e.t1 ? 0.0 : (*t - e.t1) / (e.t2 - e.t1);
      s.cx += (e.to_cx - s.cx) * f;
      s.cy += (e.to_cy - s.cy) * f;
      break;
    }
    case synth::EventKind::ChangeColour:
      if (during) s.colour = e.to_colour;
      break;
  }
  return states;
}

std::vector<std::optional<PixelBox>> scene_boxes(const Scene& scene, std::optional<double> t) {
  check_scene(scene);
  const auto states = object_states(scene, t);
  std::vector<std::optional<PixelBox>> boxes;
  for (size_t i = 0; i < states.size(); ++i) {
    if (!states[i].visible) {
      boxes.emplace_back();
      continue;
    }
    boxes.push_back(clipped(extent(outline(scene, scene.objects[i], states[i])), scene.width, scene.height));
  }
  return boxes;
}

at::Tensor draw_scene(const Scene& scene, std::optional<double> t) {
  check_scene(scene);
  auto image = at::empty({scene.height, scene.width, 3}, at::kByte);
  auto* data = image.data_ptr<uint8_t>();
  paint_background(data, scene);
  const auto states = object_states(scene, t);
  for (size_t i = 0; i < states.size(); ++i) {
    if (!states[i].visible) continue;
    const auto& rgb = synth::kPalette[static_cast<size_t>(states[i].colour)].rgb;
    fill(data, scene.width, scene.height, outline(scene, scene.objects[i], states[i]), rgb);
  }
  return image;
}

}  // namespace lego::io
