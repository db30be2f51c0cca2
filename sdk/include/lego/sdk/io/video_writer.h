// VideoWriter: H.264 (yuv420p) MP4 files from RGB frames, on FFmpeg's libavformat and libavcodec
// (DESIGN.md, sdk/io). The video plugin renders SynthGround scenes with it. The file is muxed in memory
// and written atomically by finish() (temporary file, fsync, rename): a failed or abandoned writer leaves
// nothing behind. The encoder runs on one thread with FFmpeg's bit-exact flags, so the same frames give the
// same bytes on any machine with the same FFmpeg and x264.
#pragma once

#include <ATen/core/Tensor.h>

#include <filesystem>
#include <memory>

namespace lego::io {

class VideoWriter {
 public:
  // A video of `width` x `height` pixels (2..8192; an odd side is padded by repeating the last column or
  // row, as yuv420p needs even sides) at `fps` frames per second (1..240). Unsupported when this FFmpeg has
  // no libx264.
  VideoWriter(const std::filesystem::path& out, int width, int height, int fps);
  ~VideoWriter();
  VideoWriter(const VideoWriter&) = delete;
  VideoWriter& operator=(const VideoWriter&) = delete;

  // Appends one frame: [height, width, 3] uint8 RGB.
  void write(const at::Tensor& rgb);
  // Flushes the encoder, finishes the MP4 and writes the file.
  void finish();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace lego::io
