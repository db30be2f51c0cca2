#include "lego/model/language_model.h"

#include <torch/cuda.h>

#include <algorithm>
#include <charconv>
#include <unistd.h>

#include "lego/sdk/error.h"
#include "lego/weights/tensor_source.h"

namespace lego {

llm::LlamaOptions llama_options_from_config(const config::Config& c) {
  const std::string arch = c.get_string("llm.architecture", "llama");
  if (arch != "llama") {
    throw Error(ErrorKind::Unsupported, c.source().string() + ": llm.architecture '" + arch + "' (want llama)");
  }
  llm::LlamaOptions o(c.get_int("llm.vocab_size"), c.get_int("llm.hidden_size"), c.get_int("llm.intermediate_size"),
                      c.get_int("llm.num_layers"), c.get_int("llm.num_heads"));
  o.num_kv_heads(c.get_int("llm.num_kv_heads", 0))
      .head_dim(c.get_int("llm.head_dim", 0))
      .rms_norm_eps(c.get_double("llm.rms_norm_eps", 1e-5))
      .rope_theta(c.get_double("llm.rope_theta", 10000.0))
      .rope_scaling_factor(c.get_double("llm.rope_scaling_factor", 1.0))
      .max_position(c.get_int("llm.max_position", 4096))
      .attention_bias(c.get_bool("llm.attention_bias", false))
      .tie_word_embeddings(c.get_bool("llm.tie_word_embeddings", false));
  const std::string format = c.get_string("llm.weight_format", "dense");
  try {
    if (format != "dense") o.weight_format(llm::parse_weight_format(format, "llm.weight_format"));
    o.weight_group(c.get_int("llm.weight_group", 32));
    o.validate();
  } catch (const Error& e) {
    throw Error(ErrorKind::Format, c.source().string() + ": " + e.what());
  }
  return o;
}

void llama_options_to_config(const llm::LlamaOptions& o, config::Config& c) {
  auto num = [](double v) {  // shortest text that reads back to the same double
    char buf[32];
    auto [end, ec] = std::to_chars(buf, buf + sizeof(buf), v);
    return std::string(buf, end);
  };
  c.set("llm.architecture", "llama");
  c.set("llm.vocab_size", std::to_string(o.vocab_size()));
  c.set("llm.hidden_size", std::to_string(o.hidden_size()));
  c.set("llm.intermediate_size", std::to_string(o.intermediate_size()));
  c.set("llm.num_layers", std::to_string(o.num_layers()));
  c.set("llm.num_heads", std::to_string(o.num_heads()));
  c.set("llm.num_kv_heads", std::to_string(o.kv_heads()));
  c.set("llm.head_dim", std::to_string(o.head_width()));
  c.set("llm.rms_norm_eps", num(o.rms_norm_eps()));
  c.set("llm.rope_theta", num(o.rope_theta()));
  c.set("llm.rope_scaling_factor", num(o.rope_scaling_factor()));
  c.set("llm.max_position", std::to_string(o.max_position()));
  c.set("llm.attention_bias", o.attention_bias() ? "true" : "false");
  c.set("llm.tie_word_embeddings", o.tie_word_embeddings() ? "true" : "false");
  if (o.quantized()) {
    c.set("llm.weight_format", llm::weight_format_name(o.weight_format()));
    c.set("llm.weight_group", std::to_string(o.weight_group()));
  }
}

text::Tokenizer tokenizer_from_model_dir(const std::filesystem::path& dir, const config::Config& config) {
  return text::Tokenizer::from_file(dir / config.get_string("tokenizer.file", "tokenizer.model"),
                                    config.get_list("tokenizer.added_tokens"));
}

LanguageModel LanguageModel::load(const std::filesystem::path& dir, const LoadOptions& options) {
  if (!std::filesystem::is_directory(dir)) {
    throw Error(ErrorKind::NotFound, dir.string() + ": model directory not found");
  }
  auto cfg = config::read_file(dir / "model.ini");
  for (const auto& [key, value] : options.overrides) cfg.set(key, value);
  auto llama = llama_options_from_config(cfg);
  auto tokenizer = tokenizer_from_model_dir(dir, cfg);
  // Modality sections (those naming a plugin) and [model] are the Pipeline's to check; the rest is ours.
  std::vector<std::string> own;
  for (const auto& section : cfg.sections()) {
    const auto keys = cfg.section_keys(section);
    if (section != "model" && std::find(keys.begin(), keys.end(), "plugin") == keys.end()) own.push_back(section);
  }
  if (const auto unknown = cfg.unread_keys(own); !unknown.empty()) {
    throw Error(ErrorKind::Format, (dir / "model.ini").string() + ": unknown key '" + unknown.front() + "'");
  }
  if (tokenizer.vocab_size() != llama.vocab_size()) {
    throw Error(ErrorKind::Format, (dir / "model.ini").string() + ": llm.vocab_size is " +
                                       std::to_string(llama.vocab_size()) + " but the tokenizer has " +
                                       std::to_string(tokenizer.vocab_size()) + " tokens");
  }
  if (options.device.is_cuda() && !torch::cuda::is_available()) {
    throw Error(ErrorKind::Unsupported, "device " + options.device.str() + " requested but CUDA is not available");
  }
  if (llama.quantized() && !options.device.is_cpu()) {
    throw Error(ErrorKind::Unsupported, (dir / "model.ini").string() + ": " + llm::weight_format_name(llama.weight_format()) +
                                            " weights run on the CPU only (device " + options.device.str() + ")");
  }
  llm::LlamaForCausalLM net(llama);
  auto source = weights::open_tensor_source(dir);
  const auto report = weights::load_module(*net, *source, "", options.dtype);
  std::vector<std::string> unused;
  for (const auto& name : report.unused) {
    if (is_language_model_tensor(name)) unused.push_back(name);
  }
  if (!unused.empty()) {
    // More layers than num_layers, or lm_head under tie_word_embeddings: running would silently differ.
    throw Error(ErrorKind::Format, source->describe() + ": " + std::to_string(unused.size()) +
                                       " language-model tensor(s) that " + (dir / "model.ini").string() +
                                       " gives no place to, first '" + unused.front() +
                                       "' (check llm.num_layers and llm.tie_word_embeddings)");
  }
  net->to(options.device);
  net->eval();
  // The weights' pages are mapped now, and quantised matrices take the layout this CPU's kernels read (from
  // those pages, which it then hands back): neither within the first prompt's time. (Without this,
  // `lego generate` on bench/llm_decode_7b.py's 1.1B bf16 model took 25 000 to 57 000 page faults in all,
  // most in its first prompt, which took 1.1-1.35 s against 0.85-0.95 s with it.)
  // A model larger than three quarters of the RAM is left to fault page by page: reading all of it now
  // would push its own first pages back out before they are used.
  if (options.device.is_cpu()) {
    int64_t bytes = 0;
    for (const auto& t : net->parameters()) bytes += static_cast<int64_t>(t.nbytes());
    for (const auto& t : net->buffers()) bytes += static_cast<int64_t>(t.nbytes());
    const auto ram = static_cast<int64_t>(::sysconf(_SC_PHYS_PAGES)) * static_cast<int64_t>(::sysconf(_SC_PAGESIZE));
    if (ram <= 0 || bytes <= ram / 4 * 3) {
      for (const auto& t : net->parameters()) weights::populate(t);
      for (const auto& t : net->buffers()) weights::populate(t);
    }
  }
  for (const auto& module : net->modules()) {
    if (auto* layer = dynamic_cast<llm::QuantLinearImpl*>(module.get())) layer->panels();
  }
  auto shared = std::make_shared<const text::Tokenizer>(std::move(tokenizer));
  return LanguageModel{dir, std::move(cfg), llama, net, std::move(shared), options.device,
                       options.dtype};
}

bool is_language_model_tensor(const std::string& name) {
  for (const char* prefix : {"model.embed_tokens.", "model.layers.", "model.norm.", "lm_head."}) {
    if (name.rfind(prefix, 0) == 0) return true;
  }
  return false;
}

torch::Device parse_device(const std::string& name) {
  const auto refuse = [&] { return Error(ErrorKind::InvalidArgument, "--device '" + name + "': expected cpu, cuda or cuda:N"); };
  torch::Device device(torch::kCPU);
  try {
    device = torch::Device(name);
  } catch (const c10::Error&) {
    throw refuse();
  }
  if (!device.is_cpu() && !device.is_cuda()) throw refuse();  // mps, xpu, meta, ...: not built for here
  return device;
}

torch::ScalarType parse_dtype(const std::string& name) {
  if (name == "fp32" || name == "float32") return torch::kFloat32;
  if (name == "bf16" || name == "bfloat16") return torch::kBFloat16;
  if (name == "fp16" || name == "float16") return torch::kFloat16;
  throw Error(ErrorKind::InvalidArgument, "--dtype '" + name + "': expected fp32, bf16 or fp16");
}

}  // namespace lego
