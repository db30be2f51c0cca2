// Frame sampling follows the released code's formula exactly; fbank and clips have the reference shapes.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "lego/sdk/audio/fbank.h"
#include "lego/sdk/io/av_readers.h"
#include "lego/sdk/io/video_writer.h"
#include "test_files.h"

namespace lego::io {
namespace {

struct Case {
  int64_t frames;
  int64_t wanted;
  std::vector<int64_t> expected;
};

// Expected values computed with numpy: np.arange(0, frames, frames / min(wanted, frames)).astype(int)
// (shared/reference/lego-original.md section 3).
TEST(VideoReader, UniformIndicesFollowTheReferenceFormula) {
  const std::vector<Case> cases = {
      {1, 64, {0}},
      {5, 64, {0, 1, 2, 3, 4}},
      {63, 64, {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62}},
      {64, 64, {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63}},
      {65, 64, {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63}},
      {100, 64, {0, 1, 3, 4, 6, 7, 9, 10, 12, 14, 15, 17, 18, 20, 21, 23, 25, 26, 28, 29, 31, 32, 34, 35, 37, 39, 40, 42, 43, 45, 46, 48, 50, 51, 53, 54, 56, 57, 59, 60, 62, 64, 65, 67, 68, 70, 71, 73, 75, 76, 78, 79, 81, 82, 84, 85, 87, 89, 90, 92, 93, 95, 96, 98}},
      {127, 64, {0, 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31, 33, 35, 37, 39, 41, 43, 45, 47, 49, 51, 53, 55, 57, 59, 61, 63, 65, 67, 69, 71, 73, 75, 77, 79, 81, 83, 85, 87, 89, 91, 93, 95, 97, 99, 101, 103, 105, 107, 109, 111, 113, 115, 117, 119, 121, 123, 125}},
      {128, 64, {0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30, 32, 34, 36, 38, 40, 42, 44, 46, 48, 50, 52, 54, 56, 58, 60, 62, 64, 66, 68, 70, 72, 74, 76, 78, 80, 82, 84, 86, 88, 90, 92, 94, 96, 98, 100, 102, 104, 106, 108, 110, 112, 114, 116, 118, 120, 122, 124, 126}},
      {129, 64, {0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30, 32, 34, 36, 38, 40, 42, 44, 46, 48, 50, 52, 54, 56, 58, 60, 62, 64, 66, 68, 70, 72, 74, 76, 78, 80, 82, 84, 86, 88, 90, 92, 94, 96, 98, 100, 102, 104, 106, 108, 110, 112, 114, 116, 118, 120, 122, 124, 126}},
      {300, 64, {0, 4, 9, 14, 18, 23, 28, 32, 37, 42, 46, 51, 56, 60, 65, 70, 75, 79, 84, 89, 93, 98, 103, 107, 112, 117, 121, 126, 131, 135, 140, 145, 150, 154, 159, 164, 168, 173, 178, 182, 187, 192, 196, 201, 206, 210, 215, 220, 225, 229, 234, 239, 243, 248, 253, 257, 262, 267, 271, 276, 281, 285, 290, 295}},
      {1000, 64, {0, 15, 31, 46, 62, 78, 93, 109, 125, 140, 156, 171, 187, 203, 218, 234, 250, 265, 281, 296, 312, 328, 343, 359, 375, 390, 406, 421, 437, 453, 468, 484, 500, 515, 531, 546, 562, 578, 593, 609, 625, 640, 656, 671, 687, 703, 718, 734, 750, 765, 781, 796, 812, 828, 843, 859, 875, 890, 906, 921, 937, 953, 968, 984}},
      {4321, 64, {0, 67, 135, 202, 270, 337, 405, 472, 540, 607, 675, 742, 810, 877, 945, 1012, 1080, 1147, 1215, 1282, 1350, 1417, 1485, 1552, 1620, 1687, 1755, 1822, 1890, 1957, 2025, 2092, 2160, 2228, 2295, 2363, 2430, 2498, 2565, 2633, 2700, 2768, 2835, 2903, 2970, 3038, 3105, 3173, 3240, 3308, 3375, 3443, 3510, 3578, 3645, 3713, 3780, 3848, 3915, 3983, 4050, 4118, 4185, 4253}},
      {90000, 64, {0, 1406, 2812, 4218, 5625, 7031, 8437, 9843, 11250, 12656, 14062, 15468, 16875, 18281, 19687, 21093, 22500, 23906, 25312, 26718, 28125, 29531, 30937, 32343, 33750, 35156, 36562, 37968, 39375, 40781, 42187, 43593, 45000, 46406, 47812, 49218, 50625, 52031, 53437, 54843, 56250, 57656, 59062, 60468, 61875, 63281, 64687, 66093, 67500, 68906, 70312, 71718, 73125, 74531, 75937, 77343, 78750, 80156, 81562, 82968, 84375, 85781, 87187, 88593}},
      {10, 3, {0, 3, 6}},
      {7, 8, {0, 1, 2, 3, 4, 5, 6}},
      {17, 5, {0, 3, 6, 10, 13}},
      {250, 32, {0, 7, 15, 23, 31, 39, 46, 54, 62, 70, 78, 85, 93, 101, 109, 117, 125, 132, 140, 148, 156, 164, 171, 179, 187, 195, 203, 210, 218, 226, 234, 242}},
      {251, 32, {0, 7, 15, 23, 31, 39, 47, 54, 62, 70, 78, 86, 94, 101, 109, 117, 125, 133, 141, 149, 156, 164, 172, 180, 188, 196, 203, 211, 219, 227, 235, 243}},
      {3, 1, {0}},
      {1001, 7, {0, 143, 286, 429, 572, 715, 858}},
  };
  ASSERT_EQ(cases.size(), 20u);
  for (const auto& c : cases) {
    EXPECT_EQ(VideoReader::uniform_indices(c.frames, c.wanted), c.expected) << c.frames << " frames, " << c.wanted << " wanted";
  }
  EXPECT_TRUE(VideoReader::uniform_indices(0, 64).empty());
}

// A small video gets one decoder thread when FFmpeg would pick (its team costs more than it saves there);
// the frames are the same whatever the threads, a team's included.
TEST(VideoReader, FramesAreTheSameWithOneThreadOrATeam) {
  testing::TempDir dir;
  const auto file = dir / "moving.mp4";
  {
    VideoWriter writer(file, 64, 48, 10);
    for (int64_t t = 0; t < 30; ++t) {
      auto frame = torch::zeros({48, 64, 3}, torch::kUInt8);
      frame.narrow(1, t * 56 / 30, 8).fill_(static_cast<uint8_t>(40 + t * 7));  // a bar moving right, brighter
      writer.write(frame);
    }
    writer.finish();
  }
  const auto one = VideoReader::sample_uniform(file, 8, 32, 24, 1);
  for (const int threads : {0, 2, 3}) {
    const auto other = VideoReader::sample_uniform(file, 8, 32, 24, threads);
    EXPECT_EQ(other.indices, one.indices) << threads << " threads";
    EXPECT_TRUE(torch::equal(other.frames, one.frames)) << threads << " threads";
    EXPECT_EQ(other.timestamps, one.timestamps) << threads << " threads";
  }
  EXPECT_EQ(one.indices, (std::vector<int64_t>{0, 3, 7, 11, 15, 18, 22, 26}));
  // The frames differ from each other: the bar moved.
  EXPECT_FALSE(torch::equal(one.frames[0], one.frames[7]));
}

TEST(Fbank, FramesAndBinsFollowKaldiSnipEdges) {
  auto one_second = torch::randn({16000});
  auto fb = audio::kaldi_fbank(one_second);
  EXPECT_EQ(fb.sizes(), (std::vector<int64_t>{98, 128}));  // 1 + (16000 - 400) / 160
  EXPECT_EQ(audio::kaldi_fbank(torch::randn({399})).size(0), 0);
}

TEST(Fbank, ImageBindClipsArePaddedCroppedAndNormalised) {
  auto clips = audio::imagebind_clips(torch::randn({16000 * 5}), 16000);
  EXPECT_EQ(clips.sizes(), (std::vector<int64_t>{3, 1, 128, 204}));
  // A 1 s waveform gives 98 frames: the rest is zero log-mel, normalised to (0 + 4.268) / 9.138.
  auto short_clips = audio::imagebind_clips(torch::randn({16000}), 16000);
  EXPECT_NEAR(short_clips[0][0][0][150].item<float>(), 4.268 / 9.138, 1e-6);
  const auto bounds = audio::clip_bounds(8 * 16000, {});
  ASSERT_EQ(bounds.size(), 3u);
  EXPECT_EQ(bounds[1], std::make_pair(int64_t{32000}, int64_t{64000}));  // i * (8 - 2) / 3 s
}

}  // namespace
}  // namespace lego::io
