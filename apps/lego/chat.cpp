// lego chat: an interactive conversation. Lines are messages; `/media [NAME=]PATH` (or `/NAME PATH` for a
// modality of the model) attaches a medium to the next message; /reset forgets the conversation; /quit
// (or end of input) leaves.
#include <boost/program_options.hpp>

#include <iostream>

#include "commands.h"
#include "lego/sdk/error.h"
#include "multimodal_flags.h"

namespace lego::cli {
namespace po = boost::program_options;

int run_chat(const Args& args) {
  ModelFlags model_flags_;
  Request request;
  request.sampling.max_new_tokens = 512;
  po::options_description d("chat");
  d.add_options()("system", po::value<std::string>()->notifier([&](const std::string& v) { request.system = v; }),
       "system prompt of the template (default: the model's, model.ini [model] system_prompt)");
  d.add(model_flags(model_flags_)).add(sampling_flags(request.sampling));
  if (!parse_args(args, d, "lego chat --model DIR [options]")) return 0;
  request.sampling.validate();
  auto pipeline = load_pipeline(model_flags_, host_for(args));

  std::vector<EncodedMedia> earlier;  // every medium of the conversation, in prompt order
  std::string commands;
  for (const auto& name : pipeline->media_order()) commands += "/" + name + " PATH, ";
  std::cout << "lego chat: /media [NAME=]PATH or " << commands << "attach media; /reset; /quit\n> " << std::flush;
  for (std::string line; std::getline(std::cin, line); std::cout << "> " << std::flush) {
    if (line.empty()) continue;
    if (line == "/quit" || line == "/exit") break;
    if (line == "/reset") {
      request.history.clear();
      request.media.clear();
      earlier.clear();
      std::cout << "(conversation cleared)\n";
      continue;
    }
    if (line[0] == '/') {
      const auto space = line.find(' ');
      const std::string command = line.substr(1, space == std::string::npos ? std::string::npos : space - 1);
      const std::string value = space == std::string::npos ? "" : line.substr(space + 1);
      const auto& order = pipeline->media_order();
      if (!value.empty() && (command == "media" || std::find(order.begin(), order.end(), command) != order.end())) {
        request.media.push_back(command == "media" ? parse_media(value) : MediaInput{command, value});
        std::cout << "(attached to your next message)\n";
      } else {
        std::cout << "unknown command: " << line << '\n';
      }
      continue;
    }
    try {
      request.message = line;
      auto a = pipeline->answer(request, earlier, [](int64_t, std::string_view piece) { std::cout << piece << std::flush; });
      std::cout << '\n';
      // The history keeps the message with its placeholders, as the prompt had it.
      request.history.push_back({a.message, a.output.text});
      earlier = std::move(a.media);
    } catch (const Error& e) {
      std::cout << "error: " << e.what() << '\n';
    }
    request.media.clear();
  }
  return 0;
}

}  // namespace lego::cli
