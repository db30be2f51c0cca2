// Video sampling and fbank timings, driven by bench/video_sampling.py (which times the Python readers in
// the same run):
//   av_bench sample FILE FRAMES RUNS THREADS  -> JSON seconds per uniform sampling of FRAMES frames (224 x 224)
//   av_bench fbank RUNS                       -> JSON seconds per 3 x 2 s clips of fbank (ImageBind input)
#include <torch/torch.h>

#include <chrono>
#include <iostream>
#include <vector>

#include "lego/sdk/audio/fbank.h"
#include "lego/sdk/io/av_readers.h"

namespace {

using Clock = std::chrono::steady_clock;

void print(const char* what, const std::vector<double>& runs) {
  std::cout << "{\"what\":\"" << what << "\",\"seconds\":[";
  for (size_t i = 0; i < runs.size(); ++i) std::cout << (i ? "," : "") << runs[i];
  std::cout << "]}\n";
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const std::string mode = argc > 1 ? argv[1] : "";
    std::vector<double> runs;
    if (mode == "sample" && argc == 6) {
      const int64_t frames = std::stoll(argv[3]);
      const int n = std::stoi(argv[4]);
      const int threads = std::stoi(argv[5]);
      for (int r = 0; r < n + 1; ++r) {
        const auto t0 = Clock::now();
        auto v = lego::io::VideoReader::sample_uniform(argv[2], frames, 224, 224, threads);
        if (v.frames.size(0) != frames) return 1;
        if (r > 0) runs.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
      }
      print("sample", runs);
      return 0;
    }
    if (mode == "fbank" && argc == 3) {
      const int n = std::stoi(argv[2]);
      auto wave = torch::randn({16000 * 10}) * 0.1;
      for (int r = 0; r < n + 1; ++r) {
        const auto t0 = Clock::now();
        auto clips = lego::audio::imagebind_clips(wave, 16000);
        if (clips.size(0) != 3) return 1;
        if (r > 0) runs.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
      }
      print("fbank", runs);
      return 0;
    }
  } catch (const std::exception& e) {
    std::cerr << "av_bench: " << e.what() << '\n';
    return 1;
  }
  std::cerr << "usage: av_bench sample FILE FRAMES RUNS THREADS | av_bench fbank RUNS\n";
  return 2;
}
