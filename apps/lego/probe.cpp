// lego probe: what lego reads from a media file — video stream facts and the frames uniform sampling
// would take, or the decoded audio's facts. JSON.
#include <boost/program_options.hpp>
#include <nlohmann/json.hpp>

#include <iostream>

#include "commands.h"
#include "lego/sdk/error.h"
#include "lego/sdk/io/av_readers.h"

namespace lego::cli {
namespace po = boost::program_options;

int run_probe(const Args& args) {
  std::string video, audio;
  int64_t frames = 64;
  po::options_description d("probe");
  d.add_options()
      ("video", po::value(&video), "a video file: stream facts and the uniformly sampled frame indices")
      ("audio", po::value(&audio), "an audio (or video) file: its audio track as lego decodes it (16 kHz mono)")
      ("frames", po::value(&frames)->default_value(frames), "frames to sample from --video");
  if (!parse_args(args, d, "lego probe (--video FILE [--frames N] | --audio FILE)")) return 0;
  if (video.empty() == audio.empty()) throw Error(ErrorKind::InvalidArgument, "give one of --video or --audio");
  nlohmann::json out;
  if (!video.empty()) {
    const auto sampled = io::VideoReader::sample_uniform(video, frames, 64, 64);
    const auto& i = sampled.info;
    out = {{"frames", i.frames}, {"fps", i.fps}, {"duration_s", i.duration_s}, {"width", i.width}, {"height", i.height},
           {"rotation", i.rotation}, {"codec", i.codec}, {"indices", sampled.indices}, {"timestamps", sampled.timestamps}};
  } else {
    const auto a = io::AudioReader::read(audio);
    out = {{"samples", a.samples.size(0)}, {"rate", a.rate}, {"duration_s", a.duration_s},
           {"source_rate", a.source_rate}, {"source_channels", a.source_channels}};
  }
  std::cout << out.dump() << '\n';
  return 0;
}

}  // namespace lego::cli
