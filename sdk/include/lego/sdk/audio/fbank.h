// Kaldi-compatible log-mel filterbanks on libtorch ops, and ImageBind's audio clip transform
// (shared/reference/lego-original.md section 4). Matches torchaudio.compliance.kaldi.fbank for the
// options below (povey/other windows, dither, energy and VTLN are not offered: LEGO uses none of them).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
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

// ImageBind's audio input: 16 kHz mono waveform -> [clips, 1, mel_bins, target_length]: `clips` clips of
// `clip_seconds` starting at i * max(D - clip_seconds, 0) / clips, each mean-subtracted, fbank'd,
// transposed, zero-padded or cropped to `target_length` frames, normalised with (mean, std).
struct ClipOptions {
  int64_t clips = 3;
  double clip_seconds = 2.0;
  int64_t target_length = 204;
  double mean = -4.268;  // ImageBind's audio normalisation
  double std = 9.138;
  FbankOptions fbank;
};
at::Tensor imagebind_clips(const at::Tensor& waveform, const ClipOptions& options = {});

// The clip start times (seconds) of imagebind_clips for a waveform of `duration` seconds.
std::vector<double> clip_starts(double duration, const ClipOptions& options);

}  // namespace lego::audio
