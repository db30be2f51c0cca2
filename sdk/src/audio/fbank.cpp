#include "lego/sdk/audio/fbank.h"

#include <ATen/ATen.h>

#include <cmath>
#include <limits>
#include <map>
#include <mutex>
#include <tuple>

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

}  // namespace

at::Tensor kaldi_fbank(const at::Tensor& waveform_in, const FbankOptions& o) {
  if (waveform_in.dim() != 1) throw Error(ErrorKind::InvalidArgument, "fbank: expected a 1-D waveform");
  const auto waveform = waveform_in.to(at::kFloat).contiguous();
  const auto shift = static_cast<int64_t>(o.sample_rate * o.frame_shift_ms * 0.001);
  const auto window = static_cast<int64_t>(o.sample_rate * o.frame_length_ms * 0.001);
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
  return at::clamp_min(mel, std::numeric_limits<float>::epsilon()).log();
}

std::vector<double> clip_starts(double duration, const ClipOptions& o) {
  std::vector<double> out;
  const double span = std::max(duration - o.clip_seconds, 0.0);
  for (int64_t i = 0; i < o.clips; ++i) out.push_back(span / static_cast<double>(o.clips) * static_cast<double>(i));
  return out;
}

at::Tensor imagebind_clips(const at::Tensor& waveform_in, const ClipOptions& o) {
  if (waveform_in.dim() != 1) throw Error(ErrorKind::InvalidArgument, "audio clips: expected a 1-D waveform");
  const auto waveform = waveform_in.to(at::kFloat);
  const double rate = o.fbank.sample_rate;
  const double duration = static_cast<double>(waveform.size(0)) / rate;
  const auto window = static_cast<int64_t>(rate * o.fbank.frame_length_ms * 0.001);
  std::vector<at::Tensor> clips;
  for (double start : clip_starts(duration, o)) {
    const auto begin = std::min<int64_t>(static_cast<int64_t>(start * rate), waveform.size(0));
    const auto end = std::min<int64_t>(static_cast<int64_t>((start + o.clip_seconds) * rate), waveform.size(0));
    auto clip = waveform.narrow(0, begin, end - begin);
    // Shorter than one analysis window: pad with silence so that it still yields a frame.
    if (clip.size(0) < window) clip = at::constant_pad_nd(clip, {0, window - clip.size(0)}, 0.0);
    clip = clip - clip.mean();
    auto mel = kaldi_fbank(clip, o.fbank).t();  // [mel_bins, frames]
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
