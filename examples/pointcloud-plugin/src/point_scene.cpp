#include "point_scene.h"

#include <algorithm>
#include <cmath>
#include <numbers>
#include <random>

#include "point_files.h"

namespace pointcloud {
namespace {

constexpr int kFloorSide = 16;           // floor points per side of the grid
constexpr int kObjectPoints = 600;       // points per object's surface
constexpr double kHeightPerSize = 0.8;   // an object's height for its footprint

struct Point {
  double x, y, z;
};

// A point on the surface of the unit shape (footprint [-1, 1]², height [0, 1]) of class `shape`.
Point on_shape(lego::synth::Shape shape, std::mt19937_64& rng) {
  std::uniform_real_distribution<double> u(-1.0, 1.0), h(0.0, 1.0);
  switch (shape) {
    case lego::synth::Shape::Circle: {  // a sphere resting on the floor
      double x, y, z, n;
      do {
        x = u(rng), y = u(rng), z = u(rng);
        n = std::sqrt(x * x + y * y + z * z);
      } while (n < 1e-6 || n > 1);
      return {x / n, 0.5 + 0.5 * y / n, z / n};
    }
    case lego::synth::Shape::Square: {  // a cube: pick a face, then a point on it
      const int face = static_cast<int>(h(rng) * 6) % 6;
      const double a = u(rng), b = u(rng), s = face % 2 == 0 ? -1.0 : 1.0;
      if (face < 2) return {s, 0.5 + 0.5 * a, b};
      if (face < 4) return {a, 0.5 + 0.5 * s, b};
      return {a, 0.5 + 0.5 * b, s};
    }
    case lego::synth::Shape::Triangle: {  // a pyramid over the square footprint
      const double t = std::sqrt(h(rng));  // more points near the wide base
      const double a = u(rng) * t, b = (h(rng) < 0.5 ? -1.0 : 1.0) * t;
      return h(rng) < 0.5 ? Point{a, 1 - t, b} : Point{b, 1 - t, a};
    }
    case lego::synth::Shape::Star:
    default: {  // a five-pointed star's outline, extruded
      const double angle = h(rng) * 2 * std::numbers::pi;
      const double lobe = 0.55 + 0.45 * std::abs(std::cos(2.5 * angle));
      return {lobe * std::cos(angle), h(rng), lobe * std::sin(angle)};
    }
  }
}

}  // namespace

std::optional<lego::synth::Rendered> render_scene(const lego::synth::Scene& scene, const std::filesystem::path& stem) {
  std::mt19937_64 rng(scene.seed ^ 0x9E3779B97F4A7C15ULL);
  std::normal_distribution<double> jitter(0.0, 0.004);
  Cloud cloud;
  auto add = [&](double x, double y, double z, const std::array<uint8_t, 3>& rgb) {
    cloud.xyz.insert(cloud.xyz.end(), {static_cast<float>(x), static_cast<float>(y), static_cast<float>(z)});
    for (auto c : rgb) cloud.rgb.push_back(static_cast<float>(c) / 255.0f);
    ++cloud.size;
  };
  for (int i = 0; i < kFloorSide; ++i) {
    for (int j = 0; j < kFloorSide; ++j) {
      const double x = i / double(kFloorSide - 1), z = j / double(kFloorSide - 1);
      const bool alt = scene.background != lego::synth::Background::Plain && ((i / 4 + j / 4) % 2 == 1);
      add(x, 0.0, z, alt ? scene.background_rgb2 : scene.background_rgb);
    }
  }
  lego::synth::Rendered out;
  out.file = stem;
  out.file += ".ply";
  for (const auto& o : scene.objects) {
    const double half = 0.5 * o.size;  // sizes are fractions of the square floor's side
    const double height = std::min(1.0, 2 * half * kHeightPerSize);
    const auto& rgb = lego::synth::kPalette[static_cast<size_t>(o.colour)].rgb;
    const double c = std::cos(o.angle), s = std::sin(o.angle);
    double lo[3] = {1e9, 1e9, 1e9}, hi[3] = {-1e9, -1e9, -1e9};
    for (int k = 0; k < kObjectPoints; ++k) {
      const auto p = on_shape(o.shape, rng);
      const double rx = c * p.x - s * p.z, rz = s * p.x + c * p.z;
      const double v[3] = {std::clamp(o.cx + half * rx + jitter(rng), 0.0, 1.0), std::clamp(height * p.y, 0.0, 1.0),
                           std::clamp(o.cy + half * rz + jitter(rng), 0.0, 1.0)};
      add(v[0], v[1], v[2], rgb);
      for (int a = 0; a < 3; ++a) {
        lo[a] = std::min(lo[a], v[a]);
        hi[a] = std::max(hi[a], v[a]);
      }
    }
    out.boxes.push_back({lo[0], lo[1], lo[2], hi[0], hi[1], hi[2]});
  }
  write_ply(out.file, cloud);
  return out;
}

}  // namespace pointcloud
