// lego probe: what lego reads from a media file — the picture stream's facts and the frames uniform
// sampling would take, or the decoded audio track's facts. JSON.
#include <boost/program_options.hpp>
#include <nlohmann/json.hpp>

#include <iostream>

#include "commands.h"
#include "lego/sdk/error.h"
#include "lego/sdk/io/av_readers.h"

namespace lego::cli {
namespace po = boost::program_options;

int run_probe(const Args& args) {
  std::string in;
  int64_t frames = 64;
  bool samples = false;
  int threads = 0;
  po::options_description d("probe");
  d.add_options()
      ("in", po::value(&in)->required(), "the media file")
      ("frames", po::value(&frames)->default_value(frames), "frames to sample uniformly from its picture stream")
      ("threads", po::value(&threads)->default_value(threads), "decoder threads for the frames (0: FFmpeg picks)")
      ("samples", po::bool_switch(&samples), "decode its audio track instead (16 kHz mono), as lego reads it");
  if (!parse_args(args, d, "lego probe --in FILE [--frames N] [--threads N] | --samples")) return 0;
  if (threads < 0) throw Error(ErrorKind::InvalidArgument, "--threads must be 0 (FFmpeg picks) or more");
  nlohmann::json out;
  if (!samples) {
    const auto sampled = io::VideoReader::sample_uniform(in, frames, 64, 64, threads);
    const auto& i = sampled.info;
    out = {{"frames", i.frames}, {"fps", i.fps}, {"duration_s", i.duration_s}, {"width", i.width}, {"height", i.height},
           {"rotation", i.rotation}, {"codec", i.codec}, {"indices", sampled.indices}, {"timestamps", sampled.timestamps},
           {"decoded", sampled.decoded}};
  } else {
    const auto a = io::AudioReader::read(in);
    out = {{"samples", a.samples.size(0)}, {"rate", a.rate}, {"duration_s", a.duration_s},
           {"source_rate", a.source_rate}, {"source_channels", a.source_channels}};
  }
  std::cout << out.dump() << '\n';
  return 0;
}

}  // namespace lego::cli
