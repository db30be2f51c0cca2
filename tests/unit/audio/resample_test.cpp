// The torchaudio-compatible resampler: lengths, rate checks, ranges, and memory that stays linear in the
// output even for coprime rates (whose torchaudio kernel is gigabytes). Value parity with
// torchaudio.functional.resample is checked in tests/parity/test_sound_release.py.
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <torch/torch.h>

#include <cmath>

#include "lego/sdk/audio/resample.h"
#include "lego/sdk/error.h"

namespace lego::audio {
namespace {

int64_t peak_rss_bytes() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<int64_t>(usage.ru_maxrss) * 1024;  // Linux: kilobytes
}

void expect_invalid(const std::function<void()>& call, const std::string& needle) {
  try {
    call();
    ADD_FAILURE() << "no error; expected one mentioning " << needle;
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::InvalidArgument);
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

// Expected values: math.ceil(new * length / orig) with the rates divided by their gcd, as torchaudio does.
TEST(Resample, LengthFollowsTorchaudio) {
  EXPECT_EQ(resampled_length(44100, 44100, 16000), 16000);
  EXPECT_EQ(resampled_length(44101, 44100, 16000), 16001);
  EXPECT_EQ(resampled_length(1, 48000, 16000), 1);
  EXPECT_EQ(resampled_length(7, 8000, 16000), 14);
  EXPECT_EQ(resampled_length(12345, 22050, 16000), 8958);
  EXPECT_EQ(resampled_length(0, 22050, 16000), 0);
  EXPECT_EQ(resampled_length(100, 16000, 16000), 100);
}

TEST(Resample, RefusesZeroNegativeAndAbsurdRatesBeforeAllocating) {
  const auto x = torch::randn({1000});
  expect_invalid([&] { resample(x, 0, 16000); }, "0 Hz");
  expect_invalid([&] { resample(x, -44100, 16000); }, "-44100 Hz");
  expect_invalid([&] { resample(x, 44100, 0); }, "0 Hz");
  expect_invalid([&] { resample(x, 2'147'483'647, 16000); }, "2147483647 Hz");
  expect_invalid([&] { resampled_length(10, 16000, kMaxSampleRate + 1); }, "Hz");
  expect_invalid([&] { resample(x.to(torch::kInt), 44100, 16000); }, "float32 or float64");
  expect_invalid([&] { resample_range(x, 44100, 16000, 10, 5000); }, "outside");
  ResampleOptions wide;
  wide.rolloff = 0.0;
  expect_invalid([&] { resample(x, 44100, 16000, wide); }, "rolloff");
}

TEST(Resample, EqualRatesReturnTheInput) {
  const auto x = torch::randn({2, 777});
  EXPECT_TRUE(torch::equal(resample(x, 16000, 16000), x));
}

TEST(Resample, RangesAndBatchesGiveTheSameValuesAsTheWhole) {
  torch::manual_seed(3);
  const auto x = torch::randn({2, 3, 9000});
  for (const auto& [from, to] : std::vector<std::pair<int64_t, int64_t>>{{44100, 16000}, {8000, 16000}, {1009, 16000}, {96000, 16000}}) {
    const auto whole = resample(x, from, to);
    ASSERT_EQ(whole.sizes(), (std::vector<int64_t>{2, 3, resampled_length(9000, from, to)})) << from;
    const int64_t n = whole.size(2);
    const auto part = resample_range(x, from, to, n / 3, n - 5);
    EXPECT_TRUE(torch::allclose(part, whole.narrow(2, n / 3, n - 5 - n / 3), 1e-6, 1e-6)) << from;
    const auto one = resample(x[1][2], from, to);
    EXPECT_TRUE(torch::allclose(one, whole[1][2], 1e-6, 1e-6)) << from;
  }
}

TEST(Resample, KeepsALowToneAndRemovesOneAboveTheNewNyquist) {
  const int64_t from = 44100, to = 16000;
  const auto t = torch::arange(from, torch::kDouble) / from;
  const auto low = resample(torch::sin(2 * M_PI * 1000 * t).to(torch::kFloat), from, to);
  const auto t16 = torch::arange(low.size(0), torch::kDouble) / to;
  const auto expected = torch::sin(2 * M_PI * 1000 * t16).to(torch::kFloat);
  // Away from the edges (zero padding there, as in torchaudio) the tone comes through unchanged.
  EXPECT_LT((low - expected).narrow(0, 200, 15600).abs().max().item<float>(), 2e-3);
  const auto high = resample(torch::sin(2 * M_PI * 12000 * t).to(torch::kFloat), from, to);
  EXPECT_LT(high.narrow(0, 200, 15600).abs().max().item<float>(), 2e-2);
}

// torchaudio's kernel for 44101 -> 16000 Hz is [16000, 44135] float32 (2.8 GB); its convolution's
// im2col buffer grows with the input as well. Three minutes of 44101 Hz audio here must stay within a
// small multiple of the input and output sizes.
TEST(Resample, CoprimeRatesAndLongInputsUseLinearMemory) {
  const int64_t from = 44101, to = 16000, seconds = 180;
  auto x = torch::randn({from * seconds});
  const int64_t before = peak_rss_bytes();
  const auto y = resample(x, from, to);
  const int64_t grown = peak_rss_bytes() - before;
  ASSERT_EQ(y.size(0), resampled_length(from * seconds, from, to));
  EXPECT_TRUE(torch::isfinite(y).all().item<bool>());
  const int64_t io_bytes = (x.numel() + y.numel()) * 4;
  std::cout << "44101 -> 16000 Hz, " << seconds << " s: peak RSS grew " << grown / (1 << 20) << " MiB (input + output "
            << io_bytes / (1 << 20) << " MiB)\n";
#if defined(__SANITIZE_ADDRESS__)
  // ASan keeps freed blocks in its quarantine (256 MiB) and adds shadow memory: RSS is not the program's.
  GTEST_SKIP() << "peak RSS bound not checked under AddressSanitizer";
#endif
  EXPECT_LT(grown, int64_t{128} << 20);
}

}  // namespace
}  // namespace lego::audio
