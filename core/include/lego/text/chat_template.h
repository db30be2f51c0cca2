// The LEGO conversation templates (shared/reference/lego-original.md section 5).
//
// Inference (what the released demo sends): system + "###Human: " + message + "###Assistant:", earlier
// turns joined the same way; generation stops at "###". Training (conv_lego): system + "\n\n", then
// "### Human: ...\n" / "### Assistant: ...\n" per turn and a trailing "### ". The whitespace differs between
// the two forms in the original; both are kept as they were.
#pragma once

#include <string>
#include <vector>

namespace lego::text {

// conv_lego's system prompt.
inline constexpr const char* kLegoSystemPrompt =
    "A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, "
    "detailed, and polite answers to the human's questions.";
// Where an answer ends: the model learnt to write the next "###" header.
inline constexpr const char* kLegoStop = "###";

struct Turn {
  std::string human;
  std::string assistant;
};

// The prompt for answering `message` after `history`.
std::string render_inference_prompt(const std::vector<Turn>& history, const std::string& message,
                                    const std::string& system = kLegoSystemPrompt);

// The prompt for answering `message` after `history`, in the training form's whitespace: system + "\n\n",
// earlier turns as training writes them, then "### Human: " + message + "\n### Assistant:". Models trained
// by lego ask this way (model.ini `[model] prompt_format = training`), so a small model sees at inference
// exactly the text it learnt from.
std::string render_training_form_prompt(const std::vector<Turn>& history, const std::string& message,
                                        const std::string& system = kLegoSystemPrompt);
// A whole conversation in the training form.
std::string render_training_prompt(const std::vector<Turn>& turns, const std::string& system = kLegoSystemPrompt);

}  // namespace lego::text
