// Drawing SynthGround scenes (lego/sdk/io/synth_draw.h): objects land inside their computed boxes in their
// palette colour, boxes match the drawn pixels, events apply at their times, the same scene draws the same
// pixels, and hostile scenes are refused naming the field.
#include "lego/sdk/io/synth_draw.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>

#include "test_files.h"

namespace lego::io {
namespace {

using synth::Shape;

synth::Scene one_object(Shape shape, double angle = 0.3) {
  synth::Scene s;
  s.width = 200;
  s.height = 120;
  s.background_rgb = {90, 140, 200};
  s.objects.push_back({shape, 0, 0.3, 0.4, 0.55, angle});  // red
  return s;
}

// Whether the pixel differs from the plain background by more than a quarter of the way to red.
bool covered(const at::Tensor& image, int x, int y, const std::array<uint8_t, 3>& bg) {
  const auto p = image.accessor<uint8_t, 3>()[y][x];
  int diff = 0;
  for (int c = 0; c < 3; ++c) diff = std::max(diff, std::abs(p[c] - bg[static_cast<size_t>(c)]));
  return diff > 40;
}

// The extent [x1, y1, x2, y2) of the pixels that differ from the background.
PixelBox drawn_extent(const at::Tensor& image, const std::array<uint8_t, 3>& bg) {
  PixelBox b{1e9, 1e9, -1, -1};
  for (int y = 0; y < image.size(0); ++y) {
    for (int x = 0; x < image.size(1); ++x) {
      if (!covered(image, x, y, bg)) continue;
      b.x1 = std::min(b.x1, static_cast<double>(x)), b.y1 = std::min(b.y1, static_cast<double>(y));
      b.x2 = std::max(b.x2, x + 1.0), b.y2 = std::max(b.y2, y + 1.0);
    }
  }
  return b;
}

TEST(SynthDraw, EachShapeIsDrawnInItsColourInsideItsBoxAndBackgroundOutside) {
  for (int shape = 0; shape < synth::kShapes; ++shape) {
    SCOPED_TRACE(synth::kShapeNames[static_cast<size_t>(shape)]);
    const auto scene = one_object(static_cast<Shape>(shape));
    const auto image = draw_scene(scene, std::nullopt);
    ASSERT_EQ(image.sizes(), (std::vector<int64_t>{120, 200, 3}));
    const auto box = scene_boxes(scene, std::nullopt).at(0).value();
    // The centre is red (a star's and a triangle's centroid lie inside them).
    const auto centre = image[66][80];
    EXPECT_EQ(centre[0].item<int>(), 220);
    EXPECT_EQ(centre[1].item<int>(), 40);
    EXPECT_EQ(centre[2].item<int>(), 40);
    // Outside the box, every pixel is background.
    for (int y = 0; y < 120; ++y) {
      for (int x = 0; x < 200; ++x) {
        const bool outside = x + 1 <= std::floor(box.x1) || x >= std::ceil(box.x2) || y + 1 <= std::floor(box.y1) || y >= std::ceil(box.y2);
        if (outside) {
          ASSERT_FALSE(covered(image, x, y, scene.background_rgb)) << x << "," << y;
        }
      }
    }
    // The box is the drawn pixels' extent within a pixel.
    const auto drawn = drawn_extent(image, scene.background_rgb);
    EXPECT_NEAR(drawn.x1, box.x1, 1.0);
    EXPECT_NEAR(drawn.y1, box.y1, 1.0);
    EXPECT_NEAR(drawn.x2, box.x2, 1.0);
    EXPECT_NEAR(drawn.y2, box.y2, 1.0);
  }
}

TEST(SynthDraw, SizeIsTheSideOrDiameterAsAFractionOfTheShorterSide) {
  const auto circle = scene_boxes(one_object(Shape::Circle), std::nullopt).at(0).value();
  EXPECT_NEAR(circle.x2 - circle.x1, 0.3 * 120, 1e-9);
  EXPECT_NEAR((circle.x1 + circle.x2) / 2, 0.4 * 200, 1e-9);
  const auto square = scene_boxes(one_object(Shape::Square, 0.0), std::nullopt).at(0).value();
  EXPECT_NEAR(square.y2 - square.y1, 36, 1e-9);
  // Turned by 45 degrees, the square's box is its diagonal.
  const auto turned = scene_boxes(one_object(Shape::Square, M_PI / 4), std::nullopt).at(0).value();
  EXPECT_NEAR(turned.x2 - turned.x1, 36 * std::sqrt(2.0), 1e-9);
}

TEST(SynthDraw, EdgesAreAntiAliased) {
  const auto scene = one_object(Shape::Circle);
  const auto red = draw_scene(scene, std::nullopt).select(2, 0).to(torch::kInt32);
  // Around the circle (perimeter about 113 px), many pixels lie strictly between the background and red.
  const int between = ((red > 91) & (red < 219)).sum().item<int>();
  EXPECT_GE(between, 40);
  EXPECT_LE(between, 250);
}

TEST(SynthDraw, BoxesAreClippedToTheFrame) {
  auto scene = one_object(Shape::Circle);
  scene.objects[0].cx = 0.02;
  scene.objects[0].cy = 0.98;
  const auto box = scene_boxes(scene, std::nullopt).at(0).value();
  EXPECT_EQ(box.x1, 0.0);
  EXPECT_EQ(box.y2, 120.0);
  EXPECT_NEAR(box.x2, 4 + 18, 1e-9);
}

TEST(SynthDraw, LaterObjectsAreDrawnOnTop) {
  auto scene = one_object(Shape::Square, 0);
  scene.objects.push_back({Shape::Circle, 2, 0.1, 0.4, 0.55, 0});  // blue, on the red square's centre
  const auto image = draw_scene(scene, std::nullopt);
  EXPECT_EQ(image[66][80][2].item<int>(), 220);
  EXPECT_EQ(image[66][80][0].item<int>(), 40);
}

TEST(SynthDraw, EventsApplyAtTheirTimes) {
  auto scene = one_object(Shape::Square, 0);
  scene.event = synth::Event{0, synth::EventKind::Appear, 0.25, 0.5};
  EXPECT_FALSE(scene_boxes(scene, 0.1).at(0).has_value());
  EXPECT_TRUE(scene_boxes(scene, 0.3).at(0).has_value());
  EXPECT_FALSE(scene_boxes(scene, 0.6).at(0).has_value());
  EXPECT_TRUE(scene_boxes(scene, std::nullopt).at(0).has_value());  // a still shows it
  EXPECT_EQ(draw_scene(scene, 0.1)[66][80][0].item<int>(), 90);
  EXPECT_EQ(draw_scene(scene, 0.3)[66][80][0].item<int>(), 220);

  scene.event = synth::Event{0, synth::EventKind::Move, 0.2, 0.6, 0.8, 0.25};
  auto centre_x = [&](double t) {
    const auto b = scene_boxes(scene, t).at(0).value();
    return (b.x1 + b.x2) / 2;
  };
  EXPECT_NEAR(centre_x(0.1), 80, 1e-9);
  EXPECT_NEAR(centre_x(0.4), 120, 1e-9);  // half way from 80 to 160
  EXPECT_NEAR(centre_x(0.9), 160, 1e-9);
  EXPECT_EQ(draw_scene(scene, 0.9)[30][160][0].item<int>(), 220);

  scene.event = synth::Event{0, synth::EventKind::ChangeColour, 0.2, 0.6, 0.5, 0.5, 3};  // yellow
  EXPECT_EQ(draw_scene(scene, 0.1)[66][80][1].item<int>(), 40);
  EXPECT_EQ(draw_scene(scene, 0.4)[66][80][1].item<int>(), 220);
  EXPECT_EQ(draw_scene(scene, 0.7)[66][80][1].item<int>(), 40);
}

TEST(SynthDraw, BackgroundsMixTheTwoColoursAndRepeatWithTheSeed) {
  auto scene = one_object(Shape::Star);
  scene.background_rgb = {0, 0, 0};
  scene.background_rgb2 = {200, 200, 200};
  for (auto bg : {synth::Background::Gradient, synth::Background::Texture}) {
    scene.background = bg;
    for (uint64_t seed : {1u, 2u, 3u, 4u}) {
      scene.seed = seed;
      const auto a = draw_scene(scene, std::nullopt);
      EXPECT_TRUE(torch::equal(a, draw_scene(scene, std::nullopt)));
      const auto green = a.select(2, 1).to(torch::kInt32);
      // Both colours show (nearly), and every pixel is a mix of them (grey levels only off the star).
      EXPECT_LT(green.min().item<int>(), 40);
      EXPECT_GT(green.max().item<int>(), 160);
    }
    scene.seed = 1;
    const auto one = draw_scene(scene, std::nullopt);
    scene.seed = 2;
    EXPECT_FALSE(torch::equal(one, draw_scene(scene, std::nullopt)));
  }
}

TEST(SynthDraw, RefusesHostileScenesNamingTheField) {
  using testing::expect_error;
  auto bad = [](auto change, const char* field) {
    auto s = one_object(Shape::Circle);
    change(s);
    expect_error([&] { draw_scene(s, std::nullopt); }, ErrorKind::InvalidArgument, {field});
    expect_error([&] { check_scene(s); }, ErrorKind::InvalidArgument, {field});
  };
  bad([](synth::Scene& s) { s.width = 8; }, "scene.width");
  bad([](synth::Scene& s) { s.height = 1 << 20; }, "scene.height");
  bad([](synth::Scene& s) { s.duration_s = std::nan(""); }, "scene.duration_s");
  bad([](synth::Scene& s) { s.duration_s = 1e6; }, "scene.duration_s");
  bad([](synth::Scene& s) { s.background = static_cast<synth::Background>(7); }, "scene.background");
  bad([](synth::Scene& s) { s.objects.resize(65); }, "scene.objects");
  bad([](synth::Scene& s) { s.objects[0].colour = 8; }, "scene.objects[0].colour");
  bad([](synth::Scene& s) { s.objects[0].shape = static_cast<Shape>(-1); }, "scene.objects[0].shape");
  bad([](synth::Scene& s) { s.objects[0].size = INFINITY; }, "scene.objects[0].size");
  bad([](synth::Scene& s) { s.objects[0].cx = -0.5; }, "scene.objects[0].cx");
  bad([](synth::Scene& s) { s.objects[0].angle = NAN; }, "scene.objects[0].angle");
  bad([](synth::Scene& s) { s.event = synth::Event{3}; }, "scene.event.object");
  bad([](synth::Scene& s) { s.event = synth::Event{0, synth::EventKind::Move, 0.5, 0.2}; }, "scene.event.t2");
  bad([](synth::Scene& s) { s.event = synth::Event{0, synth::EventKind::ChangeColour, 0, 1, 0.5, 0.5, -2}; }, "scene.event.to_colour");
  bad([](synth::Scene& s) { s.sounding = 1; }, "scene.sounding");
}

}  // namespace
}  // namespace lego::io
