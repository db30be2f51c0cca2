// Fuzzes io::AudioReader (FFmpeg demuxers and decoders behind lego's checks): decode every channel at the
// file's own rate, and once more down-mixed. What it returns must be finite float samples with a
// consistent shape, rate and duration.
#include <ATen/ATen.h>

#include <cmath>

#include "fuzz_support.h"
#include "lego/sdk/io/av_readers.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto file = lego::fuzz::write_input("input.wav", data, size);
  for (const auto mix : {lego::io::ChannelMix::kKeep, lego::io::ChannelMix::kDownmix}) {
    lego::io::Audio a;
    if (!lego::fuzz::refused_or_done([&] { a = lego::io::AudioReader::read(file, mix); })) return 0;
    lego::fuzz::check(a.rate > 0, "no sample rate");
    lego::fuzz::check(a.samples.dim() == 2 && a.samples.scalar_type() == at::kFloat, "samples are not [C, N] float32");
    lego::fuzz::check(a.samples.size(1) > 0, "an empty clip was returned instead of refused");
    lego::fuzz::check(mix == lego::io::ChannelMix::kKeep ? a.samples.size(0) == a.source_channels : a.samples.size(0) == 1,
                      "channel count does not match the mix asked for");
    lego::fuzz::check(a.samples.isfinite().all().item<bool>(), "non-finite samples");
    lego::fuzz::check(std::isfinite(a.duration_s) && a.duration_s >= 0, "non-finite duration");
    lego::fuzz::check(a.source_channels > 0, "source channels not set");
  }
  return 0;
}
