// lego chat: an interactive conversation. Lines are messages; /image, /video, /sound PATH attach media to
// the next message; /reset forgets the conversation; /quit (or end of input) leaves.
#include <boost/program_options.hpp>

#include <iostream>

#include "answer.h"
#include "commands.h"
#include "lego/sdk/error.h"
#include "lego/text/chat_template.h"
#include "multimodal_flags.h"

namespace lego::cli {
namespace po = boost::program_options;

int run_chat(const Args& args) {
  ModelFlags model_flags_;
  std::string system = text::kLegoSystemPrompt;
  generate::SamplingOptions sampling;
  sampling.max_new_tokens = 512;
  po::options_description d("chat");
  d.add_options()("system", po::value(&system), "system prompt of the template");
  d.add(model_flags(model_flags_)).add(sampling_flags(sampling));
  if (!parse_args(args, d, "lego chat --model DIR [options]")) return 0;
  sampling.validate();
  sampling.stop.push_back(text::kLegoStop);
  auto loaded = load_model(model_flags_);
  auto& model = *loaded.model;

  std::vector<text::Turn> history;
  std::vector<host::MediaInput> pending;
  std::vector<host::EncodedMedia> encoded;  // every medium of the conversation, in prompt order
  std::cout << "lego chat: /image PATH, /video PATH, /sound PATH attach media; /reset; /quit\n> " << std::flush;
  for (std::string line; std::getline(std::cin, line); std::cout << "> " << std::flush) {
    if (line.empty()) continue;
    if (line == "/quit" || line == "/exit") break;
    if (line == "/reset") {
      history.clear();
      pending.clear();
      encoded.clear();
      std::cout << "(conversation cleared)\n";
      continue;
    }
    bool command = false;
    for (const char* kind : {"image", "video", "sound"}) {
      const std::string prefix = std::string("/") + kind + " ";
      if (line.rfind(prefix, 0) == 0) {
        pending.push_back({kind, line.substr(prefix.size())});
        std::cout << "(" << kind << " attached to your next message)\n";
        command = true;
      }
    }
    if (command) continue;
    if (line[0] == '/') {
      std::cout << "unknown command: " << line << '\n';
      continue;
    }
    try {
      const std::string message = model.place_media(line, pending);
      auto fresh = model.encode_media(pending);
      auto all = encoded;
      all.insert(all.end(), fresh.begin(), fresh.end());
      const std::string full = text::render_inference_prompt(history, message, system);
      auto a = answer(model, full, all, sampling,
                      [](int64_t, std::string_view piece) { std::cout << piece << std::flush; });
      std::cout << '\n';
      history.push_back({message, a.output.text});
      encoded = std::move(all);
      pending.clear();
    } catch (const Error& e) {
      std::cout << "error: " << e.what() << '\n';
      pending.clear();
    }
  }
  return 0;
}

}  // namespace lego::cli
