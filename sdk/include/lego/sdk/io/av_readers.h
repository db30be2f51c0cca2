// VideoReader and AudioReader on FFmpeg (libavformat, libavcodec, libswscale, libswresample)
// (DESIGN.md, sdk/io; shared/reference/lego-original.md sections 3 and 4).
//
// VideoReader samples n frames uniformly with the released code's index formula over the frames its
// reader (decord) counts: the stream's packets in presentation order, timed by their own timestamps (the
// container's index where it lists every packet and the stream does not reorder, else one demux pass).
// Each target is reached from the keyframe before it (seeking, or decoding on when that is fewer frames),
// and frames that are neither targets nor references are not decoded. Frames come back as decord's do:
// turned upright by the display matrix, then scaled bilinearly (aspect not kept) with the frame's matrix.
// AudioReader decodes any FFmpeg-readable audio (or a video's audio track) to float at its own rate, all
// channels or one down-mix. Every failure is a lego::Error naming the file; reading stops at a bounded
// number of packets, so corrupt input ends in an error rather than a hang.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace lego::io {

struct VideoInfo {
  int64_t frames = 0;       // packets of the stream (decord's frame count)
  double duration_s = 0;    // from the stream or container, else frames / fps
  double fps = 0;           // average frame rate
  int64_t width = 0;        // as displayed (after rotation)
  int64_t height = 0;
  int rotation = 0;         // degrees clockwise applied to the decoded frames: 0, 90, 180, 270
  std::string codec;
};

struct VideoFrames {
  at::Tensor frames;                // [T, height, width, 3] uint8 RGB
  std::vector<int64_t> indices;     // the frame indices sampled
  std::vector<double> timestamps;   // seconds of each returned frame from the stream's start (its own pts)
  VideoInfo info;
  int64_t decoded = 0;              // frames the decoder produced to get these (the work sampling took)
};

class VideoReader {
 public:
  static VideoInfo probe(const std::filesystem::path& file);
  // The released code's sampling: n = min(wanted, frames); indices = arange(0, frames, frames / n) as int.
  static std::vector<int64_t> uniform_indices(int64_t frames, int64_t wanted);
  // Samples `wanted` frames (fewer when the video has fewer) resized to width x height (as displayed).
  // `threads` decode the frames; 0 lets FFmpeg pick, except that a small video (under 5 million pixels in
  // all its frames, such as 384 x 256 x 32) gets one thread, which is faster there than starting a team.
  static VideoFrames sample_uniform(const std::filesystem::path& file, int64_t wanted, int64_t width, int64_t height,
                                    int threads = 0);
  static const std::vector<std::string>& extensions();
};

// How AudioReader combines a file's channels.
enum class ChannelMix {
  kKeep,     // every channel as decoded, as torchaudio.load returns them (the release)
  kDownmix,  // one channel: FFmpeg's default down-mix matrix (stereo: (L + R) / sqrt(2), each at -3 dB)
};

struct Audio {
  at::Tensor samples;  // [channels, N] float32 at `rate`, channels first; integer formats scaled to [-1, 1)
  int64_t rate = 0;    // the file's own sample rate: nothing is resampled here (audio::resample does that)
  double duration_s = 0;
  int64_t source_channels = 0;
};

class AudioReader {
 public:
  // Decodes the best audio stream of `file` at its own rate. The rate and channel count are checked before
  // anything is allocated; NaN or infinite samples (float files) are refused, naming the first one.
  static Audio read(const std::filesystem::path& file, ChannelMix mix = ChannelMix::kKeep);
  static const std::vector<std::string>& extensions();
};

}  // namespace lego::io
