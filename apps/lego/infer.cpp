// lego infer: one multimodal question, answered with grounding (boxes, spans) as text or JSON.
#include <boost/program_options.hpp>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <chrono>
#include <iostream>

#include "answer.h"
#include "commands.h"
#include "lego/sdk/error.h"
#include "lego/text/chat_template.h"
#include "lego/weights/tensor_source.h"
#include "multimodal_flags.h"

namespace lego::cli {
namespace po = boost::program_options;

int run_infer(const Args& args) {
  ModelFlags model_flags_;
  std::vector<std::string> images, videos, sounds;
  std::string prompt, render, dump_logits, system = text::kLegoSystemPrompt;
  bool json = false, raw = false;
  generate::SamplingOptions sampling;
  sampling.max_new_tokens = 512;  // the released CLI's default
  po::options_description d("infer");
  d.add_options()
      ("image", po::value(&images)->composing(), "an image file (repeatable)")
      ("video", po::value(&videos)->composing(), "a video file (repeatable)")
      ("sound", po::value(&sounds)->composing(), "a sound file (repeatable)")
      ("prompt", po::value(&prompt)->required(), "the question; <image>/<video>/<sound> mark where media go (default: in front)")
      ("system", po::value(&system), "system prompt of the template")
      ("raw", po::bool_switch(&raw), "send the prompt as is: no chat template, no '###' stop")
      ("json", po::bool_switch(&json), "print {text, boxes, spans, timings} as JSON")
      ("render", po::value(&render), "draw the answer's boxes on the first image, or (video only) a strip of frames with its spans marked, into this file")
      ("dump-logits", po::value(&dump_logits), "write the prompt's last-position logits [1, vocab] as safetensors ('logits')");
  d.add(model_flags(model_flags_)).add(sampling_flags(sampling));
  if (!parse_args(args, d, "lego infer --model DIR [--image P] [--video P] [--sound P] --prompt TEXT [options]")) return 0;
  sampling.validate();
  if (!render.empty() && images.empty() && videos.empty()) {
    throw Error(ErrorKind::InvalidArgument, "--render needs an --image or a --video");
  }

  auto loaded = load_model(model_flags_);
  auto& model = *loaded.model;
  std::vector<host::MediaInput> media;
  for (const auto& p : images) media.push_back({"image", p});
  for (const auto& p : videos) media.push_back({"video", p});
  for (const auto& p : sounds) media.push_back({"sound", p});
  const std::string message = model.place_media(prompt, media);
  const std::string full = raw ? message : text::render_inference_prompt({}, message, system);
  if (!raw) sampling.stop.push_back(text::kLegoStop);

  const auto t0 = std::chrono::steady_clock::now();
  const auto encoded = model.encode_media(media);
  const double encode_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  if (!dump_logits.empty()) {
    auto spliced = model.splice(full, encoded);
    generate::Generator g(model.llm().net, model.llm().tokenizer);
    weights::write_safetensors(dump_logits,
                               {{"logits", g.last_logits(spliced.embeds, torch::ones({1, spliced.embeds.size(1)}, torch::kBool))}});
  }
  generate::StreamCallback stream;
  if (!json) stream = [](int64_t, std::string_view piece) { std::cout << piece << std::flush; };
  auto a = answer(model, full, encoded, sampling, stream);
  if (!render.empty()) {
    if (!images.empty()) {
      render_boxes(images.front(), a.mentions, render);
    } else {
      render_video_strip(videos.front(), a.mentions, render);
    }
  }
  if (!json) {
    std::cout << '\n';
    return 0;
  }
  auto out = grounding_json(a.mentions, encoded);
  out["text"] = a.output.text;
  out["token_ids"] = a.output.token_ids;
  out["prompt_token_ids"] = a.prompt_ids;
  out["finish_reason"] = a.output.finish_reason;
  out["timings"] = {{"encode_ms", encode_ms},
                    {"prefill_ms", a.timings.prefill_ms},
                    {"decode_ms", a.timings.decode_ms},
                    {"prompt_tokens", a.timings.prompt_tokens},
                    {"generated_tokens", a.timings.generated_tokens}};
  std::cout << out.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << '\n';
  return 0;
}

}  // namespace lego::cli
