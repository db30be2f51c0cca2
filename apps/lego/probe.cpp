// lego probe: what lego reads from a media file — the picture stream's facts and the frames uniform
// sampling would take, or the decoded audio track's facts (and, with --out, its samples at 16 kHz). JSON.
#include <boost/program_options.hpp>
#include <nlohmann/json.hpp>

#include <iostream>

#include "commands.h"
#include "lego/sdk/audio/resample.h"
#include "lego/sdk/error.h"
#include "lego/sdk/io/av_readers.h"
#include "lego/weights/tensor_source.h"

namespace lego::cli {
namespace po = boost::program_options;

int run_probe(const Args& args) {
  std::string in;
  int64_t frames = 64;
  bool samples = false;
  bool downmix = false;
  std::string out_file;
  int threads = 0;
  po::options_description d("probe");
  d.add_options()
      ("in", po::value(&in)->required(), "the media file")
      ("frames", po::value(&frames)->default_value(frames), "frames to sample uniformly from its picture stream")
      ("threads", po::value(&threads)->default_value(threads), "decoder threads for the frames (0: FFmpeg picks)")
      ("samples", po::bool_switch(&samples), "decode its audio track instead, resampled to 16 kHz as lego reads it")
      ("downmix", po::bool_switch(&downmix), "with --samples: FFmpeg's down-mix to mono first ([sound] channels = downmix)")
      ("out", po::value(&out_file), "with --samples: write the 16 kHz samples [channels, N] as tensor `waveform` here");
  if (!parse_args(args, d, "lego probe --in FILE [--frames N] [--threads N] | --samples [--downmix] [--out W.safetensors]")) return 0;
  if (threads < 0) throw Error(ErrorKind::InvalidArgument, "--threads must be 0 (FFmpeg picks) or more");
  nlohmann::json out;
  if (!samples) {
    const auto sampled = io::VideoReader::sample_uniform(in, frames, 64, 64, threads);
    const auto& i = sampled.info;
    out = {{"frames", i.frames}, {"fps", i.fps}, {"duration_s", i.duration_s}, {"width", i.width}, {"height", i.height},
           {"rotation", i.rotation}, {"codec", i.codec}, {"indices", sampled.indices}, {"timestamps", sampled.timestamps},
           {"decoded", sampled.decoded}};
  } else {
    constexpr int64_t kRate = 16000;  // the sound branch's rate (ImageBind)
    const auto a = io::AudioReader::read(in, downmix ? io::ChannelMix::kDownmix : io::ChannelMix::kKeep);
    out = {{"samples", audio::resampled_length(a.samples.size(1), a.rate, kRate)}, {"rate", kRate},
           {"duration_s", a.duration_s}, {"channels", a.samples.size(0)}, {"source_rate", a.rate},
           {"source_samples", a.samples.size(1)}, {"source_channels", a.source_channels}};
    if (!out_file.empty()) {
      weights::write_safetensors(out_file, {{"waveform", audio::resample(a.samples, a.rate, kRate).contiguous()}});
    }
  }
  std::cout << out.dump() << '\n';
  return 0;
}

}  // namespace lego::cli
