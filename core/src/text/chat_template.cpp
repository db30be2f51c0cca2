#include "lego/text/chat_template.h"

namespace lego::text {

std::string render_inference_prompt(const std::vector<Turn>& history, const std::string& message,
                                    const std::string& system) {
  std::string out = system;
  for (const auto& t : history) out += "###Human: " + t.human + "###Assistant: " + t.assistant;
  out += "###Human: " + message + "###Assistant:";
  return out;
}

std::string render_training_prompt(const std::vector<Turn>& turns, const std::string& system) {
  std::string out = system + "\n\n";
  for (const auto& t : turns) {
    out += "### Human: " + t.human + "\n";
    out += "### Assistant: " + t.assistant + "\n";
  }
  return out + "### ";
}

std::string render_training_form_prompt(const std::vector<Turn>& history, const std::string& message,
                                        const std::string& system) {
  std::string out = system + "\n\n";
  for (const auto& t : history) {
    out += "### Human: " + t.human + "\n";
    out += "### Assistant: " + t.assistant + "\n";
  }
  return out + "### Human: " + message + "\n### Assistant:";
}

}  // namespace lego::text
