// Image branch timings, driven by bench/image_preprocess.py (which times HF in the same run):
//   image_bench preprocess DIR RUNS      -> JSON: seconds to read + preprocess every image in DIR, per run
//   image_bench encode CONFIG RUNS       -> JSON: seconds per encode of one 336-px image by the image
//                                           plugin, CONFIG = tiny | real (CLIP ViT-L/14-336 + projector)
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <iostream>
#include <numeric>
#include <vector>

#include "lego/host/plugin_host.h"
#include "lego/sdk/image/clip_preprocess.h"
#include "lego/sdk/io/image_reader.h"

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

void print_runs(const char* what, const std::vector<double>& runs, size_t items) {
  std::cout << "{\"what\":\"" << what << "\",\"items\":" << items << ",\"seconds\":[";
  for (size_t i = 0; i < runs.size(); ++i) std::cout << (i ? "," : "") << runs[i];
  std::cout << "]}\n";
}

int preprocess(const std::filesystem::path& dir, int runs) {
  std::vector<std::filesystem::path> files;
  for (const auto& e : std::filesystem::directory_iterator(dir)) files.push_back(e.path());
  std::sort(files.begin(), files.end());
  lego::image::ClipPreprocessOptions o;  // 336 px, CLIP mean/std, padded to square
  std::vector<double> times;
  double decode_s = 0;
  for (int r = 0; r < runs + 1; ++r) {
    const auto t0 = Clock::now();
    for (const auto& f : files) {
      const auto t1 = Clock::now();
      auto image = lego::io::ImageReader::read(f);
      if (r > 0) decode_s += seconds_since(t1);
      auto out = lego::image::clip_preprocess(image, o);
      if (out.size(0) != 3) return 1;
    }
    if (r > 0) times.push_back(seconds_since(t0));  // the first run warms caches
  }
  std::cout << "{\"what\":\"preprocess\",\"items\":" << files.size() << ",\"decode_share\":"
            << decode_s / std::accumulate(times.begin(), times.end(), 0.0) << ",\"seconds\":[";
  for (size_t i = 0; i < times.size(); ++i) std::cout << (i ? "," : "") << times[i];
  std::cout << "]}\n";
  return 0;
}

int encode(const std::string& which, int runs) {
  lego::host::PluginHost host;
  auto config = std::make_shared<lego::config::Config>();
  lego::ModalityConfig c{lego::config::ConfigSection(config, "image"), 4096, {}};
  if (which == "tiny") {
    c.llm_hidden_size = 64;
    for (const char* kv : {"image.image_size=336", "image.patch_size=14", "image.width=32", "image.layers=3",
                           "image.heads=4", "image.mlp_dim=64"}) {
      config->set(std::string_view(kv));
    }
  }
  auto m = host.create("image", c);
  torch::NoGradGuard ng;
  for (auto& [n, t] : m->encoder_parameters()) t.normal_(0, 0.02);
  for (auto& [n, t] : m->adapter_parameters()) t.normal_(0, 0.02);
  const lego::MediaBatch pixels{1, {{"input", torch::randn({1, 3, 336, 336})}}};
  std::vector<double> times;
  for (int r = 0; r < runs + 1; ++r) {
    const auto t0 = Clock::now();
    auto out = m->encode(pixels);
    if (out.size(1) != 576) return 1;
    if (r > 0) times.push_back(seconds_since(t0));
  }
  print_runs(which == "tiny" ? "encode_tiny" : "encode_real", times, 1);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 4) {
    std::cerr << "usage: image_bench preprocess DIR RUNS | image_bench encode tiny|real RUNS\n";
    return 2;
  }
  const std::string mode = argv[1];
  const int runs = std::stoi(argv[3]);
  try {
    if (mode == "preprocess") return preprocess(argv[2], runs);
    if (mode == "encode") return encode(argv[2], runs);
  } catch (const std::exception& e) {
    std::cerr << "image_bench: " << e.what() << '\n';
    return 1;
  }
  std::cerr << "unknown mode " << mode << '\n';
  return 2;
}
