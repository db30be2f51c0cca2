// Fuzzes io::AudioReader (FFmpeg demuxers, decoders and the resampler behind lego's checks): decode to
// 16 kHz mono. What it returns must be finite float samples with a consistent duration.
#include <ATen/ATen.h>

#include <cmath>

#include "fuzz_support.h"
#include "lego/sdk/io/av_readers.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto file = lego::fuzz::write_input("input.wav", data, size);
  lego::io::Audio a;
  if (!lego::fuzz::refused_or_done([&] { a = lego::io::AudioReader::read(file, 16000); })) return 0;
  lego::fuzz::check(a.rate == 16000, "rate is not the one asked for");
  lego::fuzz::check(a.samples.dim() == 1 && a.samples.scalar_type() == at::kFloat, "samples are not [N] float32");
  lego::fuzz::check(a.samples.size(0) > 0, "an empty clip was returned instead of refused");
  lego::fuzz::check(a.samples.isfinite().all().item<bool>(), "non-finite samples");
  lego::fuzz::check(std::isfinite(a.duration_s) && a.duration_s >= 0, "non-finite duration");
  lego::fuzz::check(a.source_rate > 0 && a.source_channels > 0, "source rate or channels not set");
  return 0;
}
