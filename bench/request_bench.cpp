// The C++ side of bench/python_overhead.py: one request answered N times through Pipeline::answer, the
// same call lego.Model.generate makes, timed per request. Prints one JSON line: {"ms": [...]}.
//
//   request_bench --model DIR --prompt TEXT [--media NAME=PATH ...] [--max-new-tokens N] [--runs N]
#include <torch/torch.h>

#include <chrono>
#include <iostream>
#include <string>
#include <vector>

#include "lego/host/plugin_host.h"
#include "lego/pipeline/pipeline.h"
#include "lego/sdk/error.h"

int main(int argc, char** argv) {
  try {
    std::string model, prompt;
    std::vector<lego::MediaInput> media;
    int64_t max_new_tokens = 8, runs = 20;
    for (int i = 1; i + 1 < argc; i += 2) {
      const std::string flag = argv[i], value = argv[i + 1];
      if (flag == "--model") {
        model = value;
      } else if (flag == "--prompt") {
        prompt = value;
      } else if (flag == "--media") {
        const auto eq = value.find('=');
        if (eq == std::string::npos) throw lego::Error(lego::ErrorKind::InvalidArgument, "--media wants NAME=PATH");
        media.push_back({value.substr(0, eq), value.substr(eq + 1)});
      } else if (flag == "--max-new-tokens") {
        max_new_tokens = std::stoll(value);
      } else if (flag == "--runs") {
        runs = std::stoll(value);
      } else {
        throw lego::Error(lego::ErrorKind::InvalidArgument, "unknown flag " + flag);
      }
    }
    auto host = std::make_shared<lego::host::PluginHost>();
    auto pipeline = lego::Pipeline::load(model, {}, host);
    lego::Request request;
    request.message = prompt;
    request.media = media;
    request.sampling.max_new_tokens = max_new_tokens;
    std::vector<double> ms;
    for (int64_t r = 0; r < runs; ++r) {
      const auto t0 = std::chrono::steady_clock::now();
      const auto answer = pipeline->answer(request, {}, [](int64_t, std::string_view) {});
      ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
      if (answer.output.token_ids.empty() && max_new_tokens > 0 && answer.output.finish_reason != "eos") return 1;
    }
    std::cout << "{\"ms\": [";
    for (size_t i = 0; i < ms.size(); ++i) std::cout << (i ? ", " : "") << ms[i];
    std::cout << "]}\n";
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "request_bench: " << e.what() << "\n";
    return 1;
  }
}
