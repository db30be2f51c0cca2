// lego infer: one multimodal question, answered with grounding (boxes, spans) as text or JSON.
#include <boost/program_options.hpp>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <iostream>

#include "answer.h"
#include "commands.h"
#include "lego/sdk/error.h"
#include "lego/weights/tensor_source.h"
#include "multimodal_flags.h"

namespace lego::cli {
namespace po = boost::program_options;

int run_infer(const Args& args) {
  ModelFlags model_flags_;
  Request request;
  std::string render, dump_logits;
  bool json = false;
  request.sampling.max_new_tokens = 512;  // the released CLI's default
  po::options_description d("infer");
  d.add_options()
      ("prompt", po::value(&request.message)->required(), "the question; placeholders (<NAME>) mark where media go (default: in front)")
      ("system", po::value<std::string>()->notifier([&](const std::string& v) { request.system = v; }),
       "system prompt of the template (default: the model's, model.ini [model] system_prompt)")
      ("raw", po::bool_switch(&request.raw), "send the prompt as is: no chat template, no '###' stop")
      ("media-seed", po::value(&request.media_seed)->default_value(0), "seed of any randomness in reading media")
      ("json", po::bool_switch(&json), "print {text, boxes, spans, timings} as JSON")
      ("render", po::value(&render), "draw the answer onto the first medium whose modality can draw (boxes on a picture, spans on a strip of frames), into this file")
      ("dump-logits", po::value(&dump_logits), "write the prompt's last-position logits [1, vocab] as safetensors ('logits')");
  d.add(model_flags(model_flags_)).add(sampling_flags(request.sampling));
  const auto host = host_for(args);
  std::vector<std::string> shorthands;
  d.add(media_flags(*host, d, shorthands));
  std::vector<po::option> parsed;
  if (!parse_args(args, d, "lego infer --model DIR [--media [NAME=]PATH ...] --prompt TEXT [options]", &parsed)) return 0;
  request.sampling.validate();
  request.media = media_of(parsed, shorthands);
  if (!render.empty()) {
    if (request.media.empty()) throw Error(ErrorKind::InvalidArgument, "--render needs a medium");
    // Refused before the answer is computed rather than after.
    const auto parent = std::filesystem::absolute(render).parent_path();
    if (!std::filesystem::is_directory(parent)) {
      throw Error(ErrorKind::InvalidArgument, "--render " + render + ": no folder " + parent.string());
    }
  }

  auto pipeline = load_pipeline(model_flags_, host);
  if (!dump_logits.empty()) {
    torch::NoGradGuard no_grad;
    const auto media = pipeline->resolve(request.media);
    const auto encoded = pipeline->encode(media, request.media_seed);
    auto spliced = pipeline->splice(pipeline->prompt(request, pipeline->place_media(request.message, media)), encoded);
    generate::Generator g(pipeline->llm().net, pipeline->llm().tokenizer);
    weights::write_safetensors(dump_logits, {{"logits", g.last_logits(spliced.embeds, spliced.valid)}});
  }
  generate::StreamCallback stream;
  if (!json) stream = [](int64_t, std::string_view piece) { std::cout << piece << std::flush; };
  const auto a = pipeline->answer(request, {}, stream);
  if (!render.empty() && !pipeline->render(a.grounding, a.media, render)) {
    throw Error(ErrorKind::Unsupported, "--render: no modality of the given media can draw an answer");
  }
  if (!json) {
    std::cout << '\n';
    return 0;
  }
  auto out = grounding_json(a.grounding);
  out["text"] = a.output.text;
  out["token_ids"] = a.output.token_ids;
  out["prompt_token_ids"] = a.prompt_ids;
  out["finish_reason"] = a.output.finish_reason;
  out["timings"] = {{"encode_ms", a.encode_ms},
                    {"prefill_ms", a.timings.prefill_ms},
                    {"decode_ms", a.timings.decode_ms},
                    {"prompt_tokens", a.timings.prompt_tokens},
                    {"generated_tokens", a.timings.generated_tokens}};
  std::cout << out.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << '\n';
  return 0;
}

}  // namespace lego::cli
