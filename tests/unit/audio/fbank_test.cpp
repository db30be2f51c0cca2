// Fbank and ImageBind clips on inputs the release mishandles or that need its exact arithmetic: huge and
// non-finite samples, several channels, pytorchvideo's rational clip times.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <limits>

#include "lego/sdk/audio/fbank.h"
#include "lego/sdk/error.h"

namespace lego::audio {
namespace {

// float32 multiplies by a power of two exactly, so the fbank of x * 2^k is the fbank of x plus 2k ln 2
// (up to the rounding of the log), where float32 arithmetic would overflow to inf and NaN from ~1e19 on.
TEST(Fbank, HugeSamplesGiveAFiniteFbankOffsetByTheirScale) {
  torch::manual_seed(1);
  const auto x = torch::randn({16000}) * 0.1;
  const auto reference = kaldi_fbank(x);
  // The lowest mel bins hold no FFT bin at 16 kHz / 512 points: their energy is 0, floored at log(eps)
  // in both; compare the others.
  const auto live = reference > std::log(std::numeric_limits<float>::epsilon()) + 1e-3;
  ASSERT_GT(live.sum().item<int64_t>(), reference.numel() * 9 / 10);
  for (const int k : {70, 100, 127}) {  // up to 1.7e37: 2^127 times a peak near 0.4
    const auto huge = x * std::ldexp(1.0, k);
    ASSERT_TRUE(torch::isfinite(huge).all().item<bool>());
    const auto fb = kaldi_fbank(huge);
    ASSERT_TRUE(torch::isfinite(fb).all().item<bool>()) << "2^" << k;
    const double offset = 2.0 * k * std::log(2.0);
    EXPECT_LT((fb - reference - offset).masked_select(live).abs().max().item<double>(), 1e-4) << "2^" << k;
  }
  // A constant huge waveform has no energy once each frame's DC offset is removed: floored, finite.
  const auto flat = kaldi_fbank(torch::full({4000}, 1e30f));
  EXPECT_TRUE(torch::isfinite(flat).all().item<bool>());
}

TEST(Fbank, NonFiniteSamplesAreRefusedNamingTheFirst) {
  auto x = torch::randn({4000});
  x[1234] = std::numeric_limits<float>::infinity();
  x[3000] = std::numeric_limits<float>::quiet_NaN();
  try {
    kaldi_fbank(x);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::InvalidArgument);
    EXPECT_NE(std::string(e.what()).find("sample 1234 of channel 0 is infinite"), std::string::npos) << e.what();
  }
  auto stereo = torch::randn({2, 32000});
  stereo[1][7] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_THROW(imagebind_clips(stereo, 16000), Error);
}

TEST(Fbank, HugeClipsAreFiniteAndOffsetByTheirScale) {
  torch::manual_seed(2);
  const auto x = torch::randn({2, 16000 * 3}) * 0.1;
  const auto reference = imagebind_clips(x, 16000);
  const auto huge = imagebind_clips(x * std::ldexp(1.0, 100), 16000);  // about 1e30
  ASSERT_TRUE(torch::isfinite(huge).all().item<bool>());
  const ClipOptions o;
  const double offset = 200 * std::log(2.0) / o.std;
  const auto frames = huge.narrow(3, 0, 198);  // 2 s clips: 198 frames, then zero padding
  const auto quiet = reference.narrow(3, 0, 198);
  const auto live = quiet > (std::log(std::numeric_limits<float>::epsilon()) - o.mean) / o.std + 1e-3;  // not floored
  EXPECT_LT((frames - quiet - offset).masked_select(live).abs().max().item<double>(), 1e-4);
  EXPECT_TRUE(torch::equal(huge.narrow(3, 198, 6), reference.narrow(3, 198, 6)));
  // 44.1 kHz input goes through the resampler: finite too.
  EXPECT_TRUE(torch::isfinite(imagebind_clips(torch::randn({44100 * 3}) * 1e30, 44100)).all().item<bool>());
}

// torchaudio.compliance.kaldi.fbank takes channel 0; the release subtracts the mean over all channels
// first, which each frame's DC removal makes irrelevant where clips do not overlap (9 s: clips 2.33 s
// apart). A down-mix would give other values.
TEST(Fbank, SeveralChannelsUseChannelZero) {
  torch::manual_seed(4);
  auto x = torch::randn({2, 16000 * 9}) * 0.1;
  x[1] = x[1] * 3 + 0.5;
  const auto both = imagebind_clips(x, 16000);
  EXPECT_LT((both - imagebind_clips(x[0], 16000)).abs().max().item<double>(), 1e-4);
  EXPECT_GT((both - imagebind_clips(x.mean(0), 16000)).abs().mean().item<double>(), 0.01);
}

// Expected values from pytorchvideo 0.1.5's ConstantClipsPerVideoSampler with Python Fractions:
// s = max(T / 16000 - 2, 0) (float64); start_i = Fraction(s) / 3 * i; (int(start_i * 16000),
// int((start_i + 2) * 16000)) clamped to T. Float64 arithmetic gets several of these ends wrong by one.
TEST(Fbank, ClipBoundsUseExactClipTimes) {
  using B = std::vector<std::pair<int64_t, int64_t>>;
  const ClipOptions o;
  EXPECT_EQ(clip_bounds(32099, o), (B{{0, 32000}, {32, 32032}, {65, 32065}}));
  EXPECT_EQ(clip_bounds(32120, o), (B{{0, 32000}, {39, 32039}, {79, 32079}}));
  EXPECT_EQ(clip_bounds(32015, o), (B{{0, 32000}, {5, 32005}, {10, 32010}}));
  EXPECT_EQ(clip_bounds(80001, o), (B{{0, 32000}, {16000, 48000}, {32000, 64000}}));
  EXPECT_EQ(clip_bounds(16000, o), (B{{0, 16000}, {0, 16000}, {0, 16000}}));
  EXPECT_EQ(clip_bounds(1234567, o), (B{{0, 32000}, {400855, 432855}, {801711, 833711}}));
}

}  // namespace
}  // namespace lego::audio
