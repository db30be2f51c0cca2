// Band-limited resampling on libtorch ops: the Hann-windowed sinc filter of torchaudio.functional.resample
// (its defaults: 6 zero crossings, roll-off 0.99), which the released sound branch applies to every file
// that is not 16 kHz (shared/reference/lego-original.md section 4). No torchaudio at run time.
//
// torchaudio convolves with a [new, 2 * width + orig] kernel (rates divided by their gcd), so coprime rates
// such as 44101 -> 16000 Hz build a table of gigabytes, most of it zeros. Here each output phase keeps only
// the taps inside the window (about 2 * width), so the table grows with the larger rate, not with the
// product of both, and outputs are computed in bounded chunks: memory is linear in the output. Any range of
// outputs can be computed alone, which is what a long file's few clips need.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace lego::audio {

struct ResampleOptions {
  int64_t lowpass_filter_width = 6;  // zero crossings of the sinc on each side (torchaudio's default)
  double rolloff = 0.99;             // cut-off as a fraction of the lower of the two Nyquist rates
};

// Sample rates outside [1, kMaxSampleRate] Hz are refused before any table is built (rates come from files).
inline constexpr int64_t kMaxSampleRate = 1'000'000;

// Samples torchaudio.functional.resample returns for `length` input samples: ceil(length * to / from).
int64_t resampled_length(int64_t length, int64_t from, int64_t to);

// waveform [..., T] (floating point) sampled at `from` Hz -> [..., resampled_length(T)] at `to` Hz. Equal
// rates return the input itself, as torchaudio does.
at::Tensor resample(const at::Tensor& waveform, int64_t from, int64_t to, const ResampleOptions& options = {});

// Only the outputs [begin, end) of resample(): [..., end - begin], the same values.
at::Tensor resample_range(const at::Tensor& waveform, int64_t from, int64_t to, int64_t begin, int64_t end,
                          const ResampleOptions& options = {});

}  // namespace lego::audio
