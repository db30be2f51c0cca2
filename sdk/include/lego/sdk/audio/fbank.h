// Kaldi-compatible log-mel filterbanks on libtorch ops, and ImageBind's audio clip transform as the
// released sound branch runs it (shared/reference/lego-original.md section 4). Matches
// torchaudio.compliance.kaldi.fbank for the options below (povey/other windows, dither, energy and VTLN
// are not offered: LEGO uses none of them).
//
// Finite input of any size gives finite output: a waveform whose peak exceeds 2^32 is scaled by a power of
// two (exact in floating point) before the power spectrum, whose float32 square would overflow near 1e19,
// and the scale comes back as an exact offset of the log energies. NaN or infinite samples are refused.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <utility>
#include <vector>

namespace lego::audio {

struct FbankOptions {
  double sample_rate = 16000;
  int64_t mel_bins = 128;
  double frame_length_ms = 25;
  double frame_shift_ms = 10;
  double preemphasis = 0.97;
  double low_freq = 20;
  double high_freq = 0;  // <= 0: relative to Nyquist
  bool remove_dc_offset = true;
  bool round_to_power_of_two = true;
};

// waveform [N] float32 -> log mel energies [frames, mel_bins] (hanning window, power spectrum,
// snip_edges: frames = 1 + (N - window) / shift; none when N < window).
at::Tensor kaldi_fbank(const at::Tensor& waveform, const FbankOptions& options = {});

// ImageBind's audio input (imagebind.data.load_and_transform_audio_data after torchaudio.load): a waveform
// [channels, T] (or [T]) at `rate` Hz -> [clips, 1, mel_bins, target_length]. The waveform is resampled to
// fbank.sample_rate with resample()'s torchaudio filter when `rate` differs (only the clips' spans are
// computed); `clips` clips of `clip_seconds` start at i * max(D - clip_seconds, 0) / clips (clip_bounds);
// in turn, each clip has the mean over all its channels and samples subtracted in place (so a later clip
// that overlaps it sees the subtracted samples, as in the release), its channel 0 is fbank'd (Kaldi's
// default channel), transposed, zero-padded or cropped to `target_length` frames and normalised with
// (mean, std). A clip shorter than one analysis window is zero-padded to one (the release fails there).
struct ClipOptions {
  int64_t clips = 3;
  double clip_seconds = 2.0;
  int64_t target_length = 204;
  double mean = -4.268;  // ImageBind's audio normalisation
  double std = 9.138;
  FbankOptions fbank;
};
at::Tensor imagebind_clips(const at::Tensor& waveform, int64_t rate, const ClipOptions& options = {});

// The sample ranges [begin, end) of imagebind_clips' clips in a waveform of `samples` samples at
// fbank.sample_rate, with pytorchvideo 0.1.5's exact rational clip times: D = samples / rate (float64),
// start_i = (i / clips) * max(D - clip_seconds, 0), begin = floor(start_i * rate), end = floor((start_i +
// clip_seconds) * rate), both clamped to [0, samples].
std::vector<std::pair<int64_t, int64_t>> clip_bounds(int64_t samples, const ClipOptions& options);

}  // namespace lego::audio
