#include "lego/sdk/audio/resample.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <string>
#include <vector>

#include "lego/sdk/error.h"

namespace lego::audio {
namespace {

// A table larger than this (phases x kept taps) is refused: 32 Mi taps, 128 MiB in float32. Rates up to
// kMaxSampleRate with the default filter need at most about 12 Mi.
constexpr int64_t kMaxTableTaps = int64_t{1} << 25;
// Outputs are computed in chunks of about this many gathered samples (4 MiB in float32; with the indices
// and products about 30 MiB of temporaries).
constexpr int64_t kChunkElements = int64_t{1} << 20;

[[noreturn]] void refuse(const std::string& what) { throw Error(ErrorKind::InvalidArgument, "resample: " + what); }

void check_rates(int64_t from, int64_t to) {
  for (const int64_t rate : {from, to}) {
    if (rate < 1 || rate > kMaxSampleRate) {
      refuse("sample rate " + std::to_string(rate) + " Hz is outside [1, " + std::to_string(kMaxSampleRate) + "]");
    }
  }
}

// The kept part of torchaudio's kernel: for each output phase j (of `next`), `taps` consecutive entries of
// its row starting at first[j]; the entries left out lie outside the window, where the kernel is zero.
struct Filter {
  int64_t orig = 0;   // input rate / gcd: the input stride of one block of `next` outputs
  int64_t next = 0;   // output rate / gcd
  int64_t width = 0;  // torchaudio's zero padding before the input
  int64_t taps = 0;
  at::Tensor first;    // [next] int64
  at::Tensor weights;  // [next, taps]
};

Filter make_filter(int64_t from, int64_t to, const ResampleOptions& o, at::ScalarType dtype) {
  if (o.lowpass_filter_width < 1 || o.lowpass_filter_width > 1024) {
    refuse("lowpass_filter_width " + std::to_string(o.lowpass_filter_width) + " is outside [1, 1024]");
  }
  if (!(o.rolloff > 0.0 && o.rolloff <= 1.0)) refuse("rolloff " + std::to_string(o.rolloff) + " is outside (0, 1]");
  const int64_t gcd = std::gcd(from, to);
  Filter f;
  f.orig = from / gcd;
  f.next = to / gcd;
  const int64_t zeros = o.lowpass_filter_width;
  const double base = static_cast<double>(std::min(f.orig, f.next)) * o.rolloff;
  const double reach = static_cast<double>(zeros) * static_cast<double>(f.orig) / base;  // window half-width in taps
  if (reach > 1e7) refuse("rates " + std::to_string(from) + " -> " + std::to_string(to) + " Hz need too wide a filter");
  f.width = static_cast<int64_t>(std::ceil(reach));
  const int64_t row = 2 * f.width + f.orig;  // torchaudio's kernel row length
  // Nonzero entries of row j sit strictly inside (width + orig * j / next -/+ reach): at most 2 * width of
  // them; one more on each side absorbs rounding.
  f.taps = std::min(row, 2 * f.width + 3);
  if (f.next > kMaxTableTaps / f.taps) {
    refuse("rates " + std::to_string(from) + " -> " + std::to_string(to) + " Hz need a table of " +
           std::to_string(f.next) + " x " + std::to_string(f.taps) + " taps");
  }
  std::vector<int64_t> first(static_cast<size_t>(f.next));
  for (int64_t j = 0; j < f.next; ++j) {
    const double open = static_cast<double>(f.width) +
                        static_cast<double>(f.orig) * static_cast<double>(j) / static_cast<double>(f.next) - reach;
    first[static_cast<size_t>(j)] = std::clamp(static_cast<int64_t>(std::floor(open)) - 1, int64_t{0}, row - f.taps);
  }
  f.first = at::tensor(first, at::kLong);
  const auto k = f.first.unsqueeze(1) + at::arange(f.taps, at::kLong).unsqueeze(0);  // [next, taps] row entries
  // torchaudio's kernel at those entries, with its operations in its order and dtype (the waveform's).
  const auto options = at::TensorOptions().dtype(dtype);
  auto t = at::arange(0, -f.next, -1, options).unsqueeze(1) / f.next + (k - f.width).to(dtype) / f.orig;
  t.mul_(base);
  t.clamp_(-zeros, zeros);
  const auto window = at::cos(t * M_PI / zeros / 2).pow(2);
  t.mul_(M_PI);
  const double scale = base / static_cast<double>(f.orig);
  auto kernel = at::where(t == 0, at::ones({}, options), t.sin() / t);
  kernel.mul_(window * scale);
  f.weights = kernel.contiguous();
  return f;
}

// x[:, lo:hi] with zeros where the range leaves [0, T).
at::Tensor padded_slice(const at::Tensor& x, int64_t lo, int64_t hi) {
  const int64_t length = x.size(1);
  const int64_t a = std::clamp(lo, int64_t{0}, length);
  const int64_t b = std::clamp(hi, a, length);
  if (a == b) return at::zeros({x.size(0), hi - lo}, x.options());
  return at::constant_pad_nd(x.narrow(1, a, b - a), {a - lo, hi - b}, 0.0);
}

// Outputs [begin, end) of x [C, T]: output n = block * next + phase is the dot product of its phase's kept
// taps with the inputs from block * orig + first[phase] - width on (torchaudio's strided convolution,
// without the zeros).
at::Tensor apply(const at::Tensor& x, const Filter& f, int64_t begin, int64_t end) {
  const int64_t channels = x.size(0);
  auto out = at::empty({channels, end - begin}, x.options());
  const int64_t chunk = std::max<int64_t>(1, kChunkElements / std::max<int64_t>(1, channels * f.taps));
  const auto steps = at::arange(f.taps, at::kLong).unsqueeze(0);
  for (int64_t n0 = begin; n0 < end; n0 += chunk) {
    const int64_t n1 = std::min(end, n0 + chunk);
    const auto n = at::arange(n0, n1, at::kLong);
    const auto phase = at::remainder(n, f.next);
    const auto start = at::div(n, f.next, "trunc") * f.orig + f.first.index_select(0, phase) - f.width;
    const int64_t lo = start.min().item<int64_t>();
    const int64_t hi = start.max().item<int64_t>() + f.taps;
    const auto local = padded_slice(x, lo, hi);
    const auto gathered = local.index_select(1, (start.unsqueeze(1) - lo + steps).reshape({-1})).view({channels, n1 - n0, f.taps});
    out.narrow(1, n0 - begin, n1 - n0).copy_((gathered * f.weights.index_select(0, phase)).sum(-1));
  }
  return out;
}

at::Tensor checked_waveform(const at::Tensor& waveform) {
  if (waveform.dim() < 1) refuse("expected a waveform [..., time]");
  if (waveform.scalar_type() != at::kFloat && waveform.scalar_type() != at::kDouble) {
    refuse(std::string("expected float32 or float64 samples, got ") + c10::toString(waveform.scalar_type()));
  }
  return waveform;
}

}  // namespace

int64_t resampled_length(int64_t length, int64_t from, int64_t to) {
  check_rates(from, to);
  if (length < 0) refuse("negative length");
  if (from == to) return length;
  const int64_t gcd = std::gcd(from, to);
  const int64_t orig = from / gcd, next = to / gcd;
  if (length > (int64_t{1} << 53) / next) refuse(std::to_string(length) + " samples are too many to resample");
  // torchaudio: ceil(new * length / orig) in float64 (exact here: new * length < 2^53).
  return static_cast<int64_t>(std::ceil(static_cast<double>(next * length) / static_cast<double>(orig)));
}

at::Tensor resample_range(const at::Tensor& waveform, int64_t from, int64_t to, int64_t begin, int64_t end,
                          const ResampleOptions& options) {
  checked_waveform(waveform);
  const int64_t length = waveform.size(-1);
  const int64_t total = resampled_length(length, from, to);
  if (begin < 0 || end < begin || end > total) {
    refuse("output range [" + std::to_string(begin) + ", " + std::to_string(end) + ") is outside [0, " +
           std::to_string(total) + ")");
  }
  if (from == to) return waveform.narrow(-1, begin, end - begin);
  auto shape = waveform.sizes().vec();
  shape.back() = end - begin;
  const auto flat = waveform.reshape({-1, length});
  if (flat.size(0) == 0 || end == begin) return at::zeros(shape, waveform.options());
  const Filter filter = make_filter(from, to, options, waveform.scalar_type());
  return apply(flat, filter, begin, end).view(shape);
}

at::Tensor resample(const at::Tensor& waveform, int64_t from, int64_t to, const ResampleOptions& options) {
  checked_waveform(waveform);
  return resample_range(waveform, from, to, 0, resampled_length(waveform.size(-1), from, to), options);
}

}  // namespace lego::audio
