// The built-in plugins' Modality::synthesize, through the plugin host as `lego synth` calls it: what each
// file grounds (boxes, a span, the object a sound singles out) is where the file shows it when the plugin
// loads that file again and maps the grounding back with its own code; the same scene gives the same bytes.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <fstream>
#include <iostream>
#include <iterator>

#include "lego/sdk/io/av_readers.h"
#include "lego/sdk/io/image_reader.h"
#include "lego/sdk/io/synth_draw.h"
#include "test_files.h"
#include "tiny_model.h"

namespace lego {
namespace {

using synth::Shape;

// The modalities of tiny.ini, made by the plugins beside the test binary.
struct Plugins {
  host::PluginHost host;
  std::shared_ptr<const config::Config> config = std::make_shared<const config::Config>(testing::tiny_config());
  std::shared_ptr<Modality> make(const std::string& name) const {
    return host.create(name, ModalityConfig{config::ConfigSection(config, name), 64, {}});
  }
};

const Plugins& plugins() {
  static const Plugins p;
  return p;
}

std::string bytes_of(const std::filesystem::path& file) {
  std::ifstream in(file, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// A wide scene (padding matters) with three objects apart from each other on a plain background.
synth::Scene wide_scene() {
  synth::Scene s;
  s.width = 320;
  s.height = 200;
  s.background_rgb = {90, 140, 200};
  s.objects = {{Shape::Circle, 0, 0.3, 0.2, 0.3, 0},
               {Shape::Star, 1, 0.4, 0.55, 0.6, 0.4},
               {Shape::Triangle, 3, 0.25, 0.85, 0.75, 1.0}};
  s.seed = 7;
  return s;
}

// The extent [x1, y1, x2, y2) of the pixels within `near` (grown by 10 px) that are at least a quarter of
// the way from the plain background `bg` to the object's colour `rgb`.
std::vector<double> pixels_of(const at::Tensor& image, const std::vector<double>& near, const std::array<uint8_t, 3>& bg,
                              const std::array<uint8_t, 3>& rgb) {
  const auto a = image.accessor<uint8_t, 3>();
  int contrast = 0;
  for (int c = 0; c < 3; ++c) contrast = std::max(contrast, std::abs(rgb[c] - bg[c]));
  std::vector<double> b = {1e9, 1e9, -1, -1};
  const int x0 = std::max(0, static_cast<int>(near[0]) - 10), x1 = std::min<int>(image.size(1), static_cast<int>(near[2]) + 10);
  const int y0 = std::max(0, static_cast<int>(near[1]) - 10), y1 = std::min<int>(image.size(0), static_cast<int>(near[3]) + 10);
  for (int y = y0; y < y1; ++y) {
    for (int x = x0; x < x1; ++x) {
      int diff = 0;
      for (int c = 0; c < 3; ++c) diff = std::max(diff, std::abs(a[y][x][c] - bg[c]));
      if (4 * diff < contrast) continue;
      b[0] = std::min(b[0], static_cast<double>(x)), b[1] = std::min(b[1], static_cast<double>(y));
      b[2] = std::max(b[2], x + 1.0), b[3] = std::max(b[3], y + 1.0);
    }
  }
  return b;
}

TEST(Synthesize, ImageBoxesMapBackOntoTheObjectsPixels) {
  testing::TempDir dir;
  const auto image = plugins().make("image");
  const auto scene = wide_scene();
  const auto r = image->synthesize(scene, dir / "scene");
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->file, dir / "scene.png");
  EXPECT_FALSE(r->span.has_value());
  EXPECT_EQ(r->singles_out, -1);
  ASSERT_EQ(r->boxes.size(), 3u);
  const auto media = image->load(r->file, 0);
  const auto pixels = io::ImageReader::read(r->file).rgb;
  ASSERT_EQ(pixels.sizes(), (std::vector<int64_t>{200, 320, 3}));
  for (size_t i = 0; i < 3; ++i) {
    SCOPED_TRACE(i);
    const auto& box = r->boxes[i];
    ASSERT_EQ(box.size(), 4u);
    // Relative to the 320 x 320 square with 60 rows of padding above: y values stay inside 60/320..260/320.
    EXPECT_GE(box[1], 60.0 / 320 - 1e-3);
    EXPECT_LE(box[3], 260.0 / 320 + 1e-3);
    for (double v : box) EXPECT_NEAR(v * 1000, std::round(v * 1000), 1e-6);  // 3 decimals
    const auto mapped = image->map_box(media, box).absolute;
    const auto drawn = pixels_of(pixels, mapped, scene.background_rgb, synth::kPalette[static_cast<size_t>(scene.objects[i].colour)].rgb);
    EXPECT_GT(drawn[2] - drawn[0], 40);  // the object was found
    for (size_t k = 0; k < 4; ++k) EXPECT_NEAR(mapped[k], drawn[k], 2.0) << k;
  }
}

TEST(Synthesize, SameSceneGivesTheSameImageBytes) {
  testing::TempDir dir;
  const auto image = plugins().make("image");
  auto scene = wide_scene();
  scene.background = synth::Background::Texture;
  ASSERT_TRUE(image->synthesize(scene, dir / "a"));
  ASSERT_TRUE(image->synthesize(scene, dir / "b"));
  EXPECT_EQ(bytes_of(dir / "a.png"), bytes_of(dir / "b.png"));
  scene.seed = 8;
  ASSERT_TRUE(image->synthesize(scene, dir / "c"));
  EXPECT_NE(bytes_of(dir / "a.png"), bytes_of(dir / "c.png"));
}

// A big yellow square that appears for [0.4, 0.7] of a 2 s scene.
synth::Scene appearing_square() {
  synth::Scene s;
  s.width = 96;
  s.height = 64;
  s.duration_s = 2;
  s.background_rgb = {40, 80, 220};
  s.objects = {{Shape::Square, 3, 0.8, 0.5, 0.5, 0}};
  s.event = synth::Event{0, synth::EventKind::Appear, 0.4, 0.7};
  s.seed = 3;
  return s;
}

TEST(Synthesize, VideoShowsTheEventDuringTheSpanItReturns) {
  testing::TempDir dir;
  const auto video = plugins().make("video");
  const auto scene = appearing_square();
  const auto r = video->synthesize(scene, dir / "clip");
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->file, dir / "clip.mp4");
  EXPECT_TRUE(r->boxes.empty());
  EXPECT_EQ(r->singles_out, -1);
  ASSERT_TRUE(r->span.has_value());
  EXPECT_EQ(*r->span, (std::array<double, 2>{0.4, 0.7}));

  const auto info = io::VideoReader::probe(r->file);
  EXPECT_EQ(info.codec, "h264");
  EXPECT_EQ(info.width, 96);
  EXPECT_NEAR(info.duration_s, 2.0, 1e-6);
  const auto media = video->load(r->file, 0);  // tiny.ini: 8 frames of 28 x 28, CLIP-normalised
  const auto span = video->map_span(media, (*r->span)[0], (*r->span)[1]);
  EXPECT_NEAR(span.start_s, 0.8, 1e-9);
  EXPECT_NEAR(span.end_s, 1.4, 1e-9);
  // The same frames, with their times: the centre is yellow (green high, blue low) exactly in the frames
  // displayed while the mapped span runs.
  const auto sampled = io::VideoReader::sample_uniform(r->file, 8, 28, 28);
  ASSERT_EQ(media.tensor.size(1), 8);
  int inside = 0, outside = 0;
  for (int64_t k = 0; k < 8; ++k) {
    const double middle = sampled.timestamps[static_cast<size_t>(k)] + 0.5 / 8;
    const bool during = middle >= span.start_s && middle <= span.end_s;
    (during ? inside : outside) += 1;
    const double green = media.tensor[1][k][14][14].item<double>() * 0.26130258 + 0.4578275;
    const double blue = media.tensor[2][k][14][14].item<double>() * 0.27577711 + 0.40821073;
    EXPECT_EQ(green > blue, during) << "frame " << k << " at " << middle << " s: green " << green << ", blue " << blue;
  }
  EXPECT_GE(inside, 2);
  EXPECT_GE(outside, 4);
}

TEST(Synthesize, VideoOfASceneWithoutAnEventHasNoSpanAndRepeatsItsBytes) {
  testing::TempDir dir;
  const auto video = plugins().make("video");
  auto scene = appearing_square();
  scene.width = 97;  // odd: padded to even for yuv420p
  scene.event.reset();
  scene.background = synth::Background::Gradient;
  const auto a = video->synthesize(scene, dir / "a");
  ASSERT_TRUE(a.has_value());
  EXPECT_FALSE(a->span.has_value());
  ASSERT_TRUE(video->synthesize(scene, dir / "b"));
  EXPECT_EQ(bytes_of(dir / "a.mp4"), bytes_of(dir / "b.mp4"));
  EXPECT_EQ(video->load(dir / "a.mp4", 0).tensor.size(1), 8);
}

// Two objects, the second of `shape` sounding.
synth::Scene sounding(Shape shape, uint64_t seed) {
  synth::Scene s;
  s.duration_s = 4;
  s.objects = {{Shape::Circle, 0, 0.2, 0.3, 0.3, 0}, {shape, 2, 0.3, 0.7, 0.6, 0}};
  s.sounding = 1;
  s.seed = seed;
  return s;
}

TEST(Synthesize, SoundTimbreTellsTheShapeClassOfTheSoundingObject) {
  testing::TempDir dir;
  const auto sound = plugins().make("sound");
  // The mean log-mel spectrum of each sound, from the plugin's own load() (ImageBind's fbank clips).
  constexpr int kSeeds = 3;
  std::vector<at::Tensor> features;
  std::vector<int> classes;
  for (int shape = 0; shape < synth::kShapes; ++shape) {
    for (int seed = 1; seed <= kSeeds; ++seed) {
      const auto stem = dir / (std::string(synth::kShapeNames[static_cast<size_t>(shape)]) + std::to_string(seed));
      const auto r = sound->synthesize(sounding(static_cast<Shape>(shape), static_cast<uint64_t>(seed)), stem);
      ASSERT_TRUE(r.has_value());
      EXPECT_EQ(r->file.extension(), ".wav");
      EXPECT_EQ(r->singles_out, 1);
      EXPECT_TRUE(r->boxes.empty());
      EXPECT_FALSE(r->span.has_value());
      const auto audio = io::AudioReader::read(r->file);
      EXPECT_EQ(audio.rate, 16000);
      EXPECT_EQ(audio.samples.sizes(), (std::vector<int64_t>{1, 64000}));
      const auto media = sound->load(r->file, 0);  // [clips, 1, 128 mel bins, 204 frames]
      ASSERT_EQ(media.tensor.dim(), 4);
      features.push_back(media.tensor.mean({0, 1, 3}));
      classes.push_back(shape);
    }
  }
  // Each sound's nearest other sound is one of its own shape class, by a clear margin.
  double worst_ratio = 0;
  for (size_t i = 0; i < features.size(); ++i) {
    double same = 1e30, other = 1e30;
    for (size_t j = 0; j < features.size(); ++j) {
      if (j == i) continue;
      const double d = (features[i] - features[j]).norm().item<double>();
      double& nearest = classes[i] == classes[j] ? same : other;
      nearest = std::min(nearest, d);
    }
    EXPECT_LT(same, other) << synth::kShapeNames[static_cast<size_t>(classes[i])] << " sound " << i;
    worst_ratio = std::max(worst_ratio, same / other);
  }
  EXPECT_LT(worst_ratio, 0.5) << "nearest same-class over nearest other-class distance";
  std::cout << "worst nearest same-class / other-class distance ratio: " << worst_ratio << "\n";
}

TEST(Synthesize, SoundOnlyWhenAnObjectSoundsAndTheSameSceneRepeatsItsBytes) {
  testing::TempDir dir;
  const auto sound = plugins().make("sound");
  auto scene = sounding(Shape::Star, 5);
  ASSERT_TRUE(sound->synthesize(scene, dir / "a"));
  ASSERT_TRUE(sound->synthesize(scene, dir / "b"));
  EXPECT_EQ(bytes_of(dir / "a.wav"), bytes_of(dir / "b.wav"));
  scene.seed = 6;
  ASSERT_TRUE(sound->synthesize(scene, dir / "c"));
  EXPECT_NE(bytes_of(dir / "a.wav"), bytes_of(dir / "c.wav"));
  scene.sounding = -1;
  EXPECT_FALSE(sound->synthesize(scene, dir / "d").has_value());
  EXPECT_FALSE(std::filesystem::exists(dir / "d.wav"));
}

TEST(Synthesize, RefusesAHostileSceneNamingTheFieldAndWritesNothing) {
  testing::TempDir dir;
  for (const char* name : {"image", "video", "sound"}) {
    auto scene = wide_scene();
    scene.objects[1].colour = 99;
    testing::expect_error([&] { plugins().make(name)->synthesize(scene, dir / "bad"); }, ErrorKind::InvalidArgument,
                          {"scene.objects[1].colour"});
  }
  EXPECT_TRUE(std::filesystem::is_empty(dir.path()));
}

}  // namespace
}  // namespace lego
