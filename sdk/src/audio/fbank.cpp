#include "lego/sdk/audio/fbank.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <mutex>
#include <tuple>

#include "lego/sdk/audio/resample.h"
#include "lego/sdk/error.h"

namespace lego::audio {
namespace {

double mel_scale(double hz) { return 1127.0 * std::log(1.0 + hz / 700.0); }

// [mel_bins, fft_bins / 2 + 1] triangular filters on the mel scale, built in float32 in the same order
// of operations as torchaudio's get_mel_banks, with the Nyquist column zero.
at::Tensor mel_banks(const FbankOptions& o, int64_t padded_window) {
  const int64_t fft_bins = padded_window / 2;
  const double nyquist = 0.5 * o.sample_rate;
  const double high = o.high_freq <= 0 ? o.high_freq + nyquist : o.high_freq;
  if (o.low_freq < 0 || o.low_freq >= nyquist || high <= o.low_freq || high > nyquist) {
    throw Error(ErrorKind::InvalidArgument, "fbank: bad frequency range [" + std::to_string(o.low_freq) + ", " +
                                                std::to_string(high) + "] for sample rate " + std::to_string(o.sample_rate));
  }
  const double bin_width = o.sample_rate / static_cast<double>(padded_window);
  const double mel_low = mel_scale(o.low_freq);
  const double mel_high = mel_scale(high);
  const double delta = (mel_high - mel_low) / static_cast<double>(o.mel_bins + 1);
  auto bin = at::arange(o.mel_bins, at::kLong).unsqueeze(1);
  auto left = mel_low + bin * delta;
  auto center = mel_low + (bin + 1.0) * delta;
  auto right = mel_low + (bin + 2.0) * delta;
  auto mel = (1127.0 * (1.0 + (bin_width * at::arange(fft_bins, at::kLong)) / 700.0).log()).unsqueeze(0);
  auto up = (mel - left) / (center - left);
  auto down = (right - mel) / (right - center);
  auto banks = at::clamp_min(at::min(up, down), 0.0).to(at::kFloat);
  return at::constant_pad_nd(banks, {0, 1}, 0.0);
}

// The filters and the window depend only on the options: built once per distinct setting.
struct Tables {
  at::Tensor banks_t;  // [fft_bins / 2 + 1, mel_bins]
  at::Tensor window;   // [window]
};

const Tables& tables_for(const FbankOptions& o, int64_t window, int64_t padded) {
  static std::mutex mutex;
  static std::map<std::tuple<double, int64_t, int64_t, int64_t, double, double>, Tables> cache;
  const auto key = std::make_tuple(o.sample_rate, o.mel_bins, window, padded, o.low_freq, o.high_freq);
  std::lock_guard<std::mutex> lock(mutex);
  auto it = cache.find(key);
  if (it == cache.end()) {
    Tables t{mel_banks(o, padded).t().contiguous(), at::hann_window(window, /*periodic=*/false, at::kFloat)};
    it = cache.emplace(key, std::move(t)).first;
  }
  return it->second;
}

// Above this peak a waveform is scaled down by a power of two: |FFT| <= 4 * 512 * 2^32 keeps the float32
// power spectrum and its mel sums far below FLT_MAX, and the resampler's and the mean's sums too.
constexpr int kSafePeakLog2 = 32;

// Refuses NaN and infinite samples, naming the first one (in time, then channel) of x [channels, T].
void check_finite(const at::Tensor& x, const char* what) {
  const auto bad = at::isfinite(x).logical_not();
  if (!bad.any().item<bool>()) return;
  const int64_t at_sample = bad.any(0).to(at::kByte).argmax().item<int64_t>();
  const int64_t channel = bad.select(1, at_sample).to(at::kByte).argmax().item<int64_t>();
  const float v = x[channel][at_sample].item<float>();
  throw Error(ErrorKind::InvalidArgument, std::string(what) + ": sample " + std::to_string(at_sample) + " of channel " +
                                              std::to_string(channel) + " is " + (std::isnan(v) ? "NaN" : "infinite"));
}

// The power of two to divide x by so that its peak stays below 2^kSafePeakLog2 (0: leave it).
int safe_exponent(const at::Tensor& x) {
  if (x.numel() == 0) return 0;
  const double peak = x.abs().max().item<double>();
  if (!(peak > std::ldexp(1.0, kSafePeakLog2))) return 0;
  return std::ilogb(peak) + 1 - kSafePeakLog2;
}

// The fbank of a waveform that was divided by 2^exponent: energies scale by 4^exponent, so the log energies
// of the original are these plus 2 * exponent * ln 2, floored at log(epsilon) as Kaldi floors energies.
at::Tensor fbank_of(const at::Tensor& waveform_in, const FbankOptions& o, int exponent) {
  const auto waveform = waveform_in.to(at::kFloat).contiguous();
  const auto shift = static_cast<int64_t>(o.sample_rate * o.frame_shift_ms * 0.001);
  const auto window = static_cast<int64_t>(o.sample_rate * o.frame_length_ms * 0.001);
  if (shift <= 0 || window <= 0) throw Error(ErrorKind::InvalidArgument, "fbank: frame length and shift must be positive");
  int64_t padded = window;
  if (o.round_to_power_of_two) {
    padded = 1;
    while (padded < window) padded <<= 1;
  }
  const int64_t n = waveform.size(0);
  if (n < window) return at::empty({0, o.mel_bins}, at::kFloat);
  const int64_t frames = 1 + (n - window) / shift;
  auto strided = waveform.as_strided({frames, window}, {shift, 1});
  auto x = strided.clone();
  if (o.remove_dc_offset) x = x - x.mean(1, /*keepdim=*/true);
  if (o.preemphasis != 0) {
    // x[i] -= p * x[i - 1], with x[-1] = x[0].
    auto previous = at::cat({x.narrow(1, 0, 1), x.narrow(1, 0, window - 1)}, 1);
    x = x - o.preemphasis * previous;
  }
  const auto& tables = tables_for(o, window, padded);
  x = x * tables.window;
  if (padded > window) x = at::constant_pad_nd(x, {0, padded - window}, 0.0);
  auto power = at::fft_rfft(x).abs().pow(2.0);
  auto mel = at::mm(power, tables.banks_t);
  const float epsilon = std::numeric_limits<float>::epsilon();
  if (exponent == 0) return at::clamp_min(mel, epsilon).log();
  return at::clamp_min(mel.log() + 2.0 * exponent * std::log(2.0), std::log(epsilon));
}

// floor(s * num / den) exactly, for a finite s >= 0 (a float64 value taken as the rational it is) and
// 0 <= num < 2^40, 0 < den < 2^20: pytorchvideo computes clip times with Fractions.
int64_t floor_scaled(double s, int64_t num, int64_t den) {
  if (!(s > 0) || num == 0) return 0;
  int e = 0;
  const double f = std::frexp(s, &e);  // s = f * 2^e, 0.5 <= f < 1
  const auto product = static_cast<__int128>(std::ldexp(f, 53)) * num;  // s * num * 2^(53 - e), < 2^93
  const int shift = 53 - e;
  if (shift <= 0) {
    if (-shift > 30) throw Error(ErrorKind::InvalidArgument, "audio clips: waveform too long");
    return static_cast<int64_t>((product << -shift) / den);
  }
  if (shift > 100) return 0;  // product / (den * 2^shift) < 2^93 / 2^100
  return static_cast<int64_t>(product / (static_cast<__int128>(den) << shift));
}

}  // namespace

at::Tensor kaldi_fbank(const at::Tensor& waveform_in, const FbankOptions& o) {
  if (waveform_in.dim() != 1) throw Error(ErrorKind::InvalidArgument, "fbank: expected a 1-D waveform");
  auto waveform = waveform_in.to(at::kFloat);
  check_finite(waveform.unsqueeze(0), "fbank");
  const int exponent = safe_exponent(waveform);
  if (exponent != 0) waveform = waveform * std::ldexp(1.0, -exponent);  // exact: a power of two
  return fbank_of(waveform, o, exponent);
}

std::vector<std::pair<int64_t, int64_t>> clip_bounds(int64_t samples, const ClipOptions& o) {
  const double rate_f = o.fbank.sample_rate;
  const auto rate = static_cast<int64_t>(rate_f);
  if (rate_f != static_cast<double>(rate) || rate < 1 || rate > kMaxSampleRate) {
    throw Error(ErrorKind::InvalidArgument, "audio clips: sample rate must be a whole number of Hz in [1, " +
                                                std::to_string(kMaxSampleRate) + "]");
  }
  if (o.clips < 1 || o.clips > 1024) throw Error(ErrorKind::InvalidArgument, "audio clips: clips must be in [1, 1024]");
  if (!(o.clip_seconds > 0) || !std::isfinite(o.clip_seconds)) {
    throw Error(ErrorKind::InvalidArgument, "audio clips: clip_seconds must be positive");
  }
  if (samples < 0 || samples > (int64_t{1} << 50)) throw Error(ErrorKind::InvalidArgument, "audio clips: bad length");
  // pytorchvideo 0.1.5: the span is float64 arithmetic (float minus Fraction is a float), every later step
  // exact rational arithmetic; int() floors.
  const double duration = static_cast<double>(samples) / rate_f;
  const double span = std::max(duration - o.clip_seconds, 0.0);
  const double length = o.clip_seconds * rate_f;
  const bool whole = std::floor(length) == length && std::fma(o.clip_seconds, rate_f, -length) == 0.0;
  std::vector<std::pair<int64_t, int64_t>> out;
  for (int64_t i = 0; i < o.clips; ++i) {
    const int64_t begin = floor_scaled(span, i * rate, o.clips);
    // (start + clip_seconds) * rate: exact when clip_seconds * rate is a whole number (2 s at 16 kHz).
    const int64_t end = whole ? begin + static_cast<int64_t>(length)
                              : static_cast<int64_t>((span / static_cast<double>(o.clips) * static_cast<double>(i) +
                                                      o.clip_seconds) * rate_f);
    out.emplace_back(std::min(begin, samples), std::clamp(end, std::min(begin, samples), samples));
  }
  return out;
}

at::Tensor imagebind_clips(const at::Tensor& waveform_in, int64_t rate, const ClipOptions& o) {
  if (waveform_in.dim() != 1 && waveform_in.dim() != 2) {
    throw Error(ErrorKind::InvalidArgument, "audio clips: expected a waveform [channels, time] or [time]");
  }
  auto waveform = (waveform_in.dim() == 1 ? waveform_in.unsqueeze(0) : waveform_in).to(at::kFloat);
  if (waveform.size(0) < 1) throw Error(ErrorKind::InvalidArgument, "audio clips: the waveform has no channels");
  check_finite(waveform, "audio clips");
  const int exponent = safe_exponent(waveform);
  if (exponent != 0) waveform = waveform * std::ldexp(1.0, -exponent);  // exact: a power of two
  const auto target = static_cast<int64_t>(o.fbank.sample_rate);
  const int64_t samples = rate == target ? waveform.size(1) : resampled_length(waveform.size(1), rate, target);
  const auto bounds = clip_bounds(samples, o);

  // The clips' spans, merged where they overlap, at the fbank's rate: each clip is a view into its span, so
  // that the in-place mean subtraction of one clip is seen by the next, as in the release.
  struct Span {
    int64_t begin, end;
    at::Tensor samples;
  };
  std::vector<Span> spans;
  auto sorted = bounds;
  std::sort(sorted.begin(), sorted.end());
  for (const auto& [b, e] : sorted) {
    if (!spans.empty() && b <= spans.back().end) {
      spans.back().end = std::max(spans.back().end, e);
    } else {
      spans.push_back({b, e, {}});
    }
  }
  for (auto& s : spans) {
    s.samples = rate == target ? waveform.narrow(1, s.begin, s.end - s.begin).clone()
                               : resample_range(waveform, rate, target, s.begin, s.end);
  }

  const auto window = static_cast<int64_t>(o.fbank.sample_rate * o.fbank.frame_length_ms * 0.001);
  std::vector<at::Tensor> clips;
  for (const auto& bound : bounds) {
    const int64_t begin = bound.first, end = bound.second;  // named copies: clang < 16 cannot capture bindings
    const auto& span = *std::find_if(spans.begin(), spans.end(), [&](const Span& s) { return s.begin <= begin && end <= s.end; });
    auto clip = span.samples.narrow(1, begin - span.begin, end - begin);
    if (clip.size(1) > 0) clip.sub_(clip.mean());
    auto channel = clip.select(0, 0);
    // Shorter than one analysis window: pad with silence so that it still yields a frame.
    if (channel.size(0) < window) channel = at::constant_pad_nd(channel, {0, window - channel.size(0)}, 0.0);
    auto mel = fbank_of(channel, o.fbank, exponent).t();  // [mel_bins, frames]
    const int64_t frames = mel.size(1);
    if (frames < o.target_length) {
      mel = at::constant_pad_nd(mel, {0, o.target_length - frames}, 0.0);
    } else {
      mel = mel.narrow(1, 0, o.target_length);
    }
    clips.push_back(((mel - o.mean) / o.std).unsqueeze(0));
  }
  return at::stack(clips, 0);
}

}  // namespace lego::audio
