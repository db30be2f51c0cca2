// Fuzzes io::VideoReader (FFmpeg demuxers and decoders behind lego's checks): probe, then uniform sampling
// of 4 frames at 16 x 16. A video is taken as it comes; what it returns must have the promised shape.
#include <ATen/ATen.h>

#include "fuzz_support.h"
#include "lego/sdk/io/av_readers.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto file = lego::fuzz::write_input("input.mp4", data, size);
  lego::fuzz::refused_or_done([&] { (void)lego::io::VideoReader::probe(file); });
  lego::io::VideoFrames v;
  if (!lego::fuzz::refused_or_done([&] { v = lego::io::VideoReader::sample_uniform(file, 4, 16, 16, 1); })) return 0;
  const int64_t n = static_cast<int64_t>(v.indices.size());
  lego::fuzz::check(n >= 1 && n <= 4, "sampled " + std::to_string(n) + " frames, want 1..4");
  lego::fuzz::check(v.timestamps.size() == v.indices.size(), "one timestamp per frame");
  lego::fuzz::check(v.frames.sizes() == at::IntArrayRef({n, 16, 16, 3}) && v.frames.scalar_type() == at::kByte,
                    "frames are not [n, 16, 16, 3] uint8");
  return 0;
}
