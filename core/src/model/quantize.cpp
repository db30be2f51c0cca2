#include "lego/model/quantize.h"

#include <torch/torch.h>

#include <functional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "lego/config/config.h"
#include "lego/fs/atomic_file.h"
#include "lego/model/language_model.h"
#include "lego/sdk/error.h"
#include "lego/weights/tensor_source.h"

namespace lego {
namespace {

bool is_weights_file(const std::filesystem::path& p) {
  const auto name = p.filename().string();
  const auto ends = [&](const std::string& tail) {
    return name.size() >= tail.size() && name.compare(name.size() - tail.size(), tail.size(), tail) == 0;
  };
  return ends(".safetensors") || ends(".bin") || ends(".index.json");
}

}  // namespace

QuantizeReport quantize_model_dir(const std::filesystem::path& in, const std::filesystem::path& out,
                                  const llm::QuantFormat& format) {
  if (!std::filesystem::is_directory(in)) throw Error(ErrorKind::NotFound, in.string() + ": model directory not found");
  if (std::filesystem::weakly_canonical(in) == std::filesystem::weakly_canonical(out)) {
    throw Error(ErrorKind::InvalidArgument, "--out " + out.string() + " is the model directory itself; write elsewhere");
  }
  auto cfg = config::read_file(in / "model.ini");
  const auto dense = llama_options_from_config(cfg);
  if (dense.quantized()) {
    throw Error(ErrorKind::Unsupported, (in / "model.ini").string() + ": the model is already " +
                                            llm::weight_format_name(dense.weight_format()) + "; quantise the dense model");
  }
  auto options = dense;
  options.weight_format(format.format).weight_group(format.group);
  format.check("--group");
  auto head_format = format;
  head_format.format = llm::WeightFormat::Int8;

  const auto source = weights::open_tensor_source(in);
  QuantizeReport report;
  // The file is written streamed: every tensor's name, dtype and shape is settled (and every source shape
  // checked) first, then each is made only when the writer reaches it, so a 7B model is quantised in the
  // memory of its largest matrix.
  std::vector<weights::TensorSpec> specs;
  std::vector<std::function<torch::Tensor()>> makers;
  std::set<std::string> used;
  const auto take = [&](const std::string& name, int64_t rows, int64_t cols) {
    const auto info = source->info(name);  // throws NotFound naming the source and tensor
    const std::vector<int64_t> want = cols > 0 ? std::vector<int64_t>{rows, cols} : std::vector<int64_t>{rows};
    if (info.shape != want) {
      throw Error(ErrorKind::Format, info.file.string() + ": tensor '" + name + "' has shape " + shape_string(info.shape) +
                                         ", model.ini gives " + shape_string(want));
    }
    used.insert(name);
    return info;
  };
  // Stacks the named [rows_i, cols] matrices and quantises them as one.
  const auto quantize = [&](const std::string& out_name, const std::vector<std::pair<std::string, int64_t>>& parts,
                            int64_t cols, const llm::QuantFormat& f) {
    int64_t rows = 0;
    double dense_bytes = 0;
    for (const auto& [name, r] : parts) {
      const auto info = take(name, r, cols);
      rows += r;
      dense_bytes += static_cast<double>(r * cols) * static_cast<double>(c10::elementSize(info.dtype));
    }
    specs.push_back({out_name + ".qweight", torch::kUInt8, {rows, f.row_bytes(cols)}});
    makers.emplace_back([&source, parts, f] {
      torch::NoGradGuard no_grad;
      std::vector<torch::Tensor> matrices;
      for (const auto& part : parts) {
        matrices.push_back(source->get(part.first));
        if (!torch::isfinite(matrices.back()).all().item<bool>()) {
          throw Error(ErrorKind::Format, source->describe() + ": tensor '" + part.first +
                                             "' holds a non-finite value (NaN or infinity); it cannot be quantised");
        }
      }
      const auto whole = matrices.size() == 1 ? matrices.front() : torch::cat(matrices, 0);
      return llm::quantize_rows(whole, f, parts.front().first);
    });
    report.matrices += 1;
    report.dense_bytes += dense_bytes;
    report.quantized_bytes += static_cast<double>(rows * f.row_bytes(cols));
  };
  const auto stack_biases = [&](const std::string& out_name, const std::vector<std::pair<std::string, int64_t>>& parts) {
    int64_t rows = 0;
    std::vector<std::string> names;
    at::ScalarType dtype = torch::kFloat32;
    for (const auto& [name, r] : parts) {
      dtype = take(name, r, 0).dtype;
      rows += r;
      names.push_back(name);
    }
    specs.push_back({out_name + ".bias", dtype, {rows}});
    makers.emplace_back([&source, names, dtype] {
      std::vector<torch::Tensor> biases;
      for (const auto& n : names) biases.push_back(source->get(n).to(dtype));
      return torch::cat(biases, 0);
    });
  };

  const int64_t h = dense.hidden_size();
  const int64_t q = dense.num_heads() * dense.head_width();
  const int64_t kv = dense.kv_heads() * dense.head_width();
  const int64_t m = dense.intermediate_size();
  for (int64_t i = 0; i < dense.num_layers(); ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    const std::string a = p + "self_attn.";
    quantize(a + "qkv_proj", {{a + "q_proj.weight", q}, {a + "k_proj.weight", kv}, {a + "v_proj.weight", kv}}, h, format);
    quantize(a + "o_proj", {{a + "o_proj.weight", h}}, q, format);
    if (dense.attention_bias()) {
      stack_biases(a + "qkv_proj", {{a + "q_proj.bias", q}, {a + "k_proj.bias", kv}, {a + "v_proj.bias", kv}});
      stack_biases(a + "o_proj", {{a + "o_proj.bias", h}});
    }
    quantize(p + "mlp.gate_up_proj", {{p + "mlp.gate_proj.weight", m}, {p + "mlp.up_proj.weight", m}}, h, format);
    quantize(p + "mlp.down_proj", {{p + "mlp.down_proj.weight", h}}, m, format);
  }
  if (!dense.tie_word_embeddings()) quantize("lm_head", {{"lm_head.weight", dense.vocab_size()}}, h, head_format);
  // Everything else (embeddings, norms, modality branches) as it is; the loader refuses what nothing uses.
  for (const auto& name : source->names()) {
    if (used.count(name) != 0) continue;
    const auto info = source->info(name);
    specs.push_back({name, info.dtype, info.shape});
    makers.emplace_back([&source, name] { return source->get(name); });
    report.copied += 1;
  }

  fs::StagedDirectory staged(out);  // the model folder appears whole or not at all
  for (const auto& entry : std::filesystem::directory_iterator(in)) {
    // The tokenizer and whatever else the model's plugins keep beside the weights.
    if (!entry.is_regular_file() || entry.path().filename() == "model.ini" || is_weights_file(entry.path())) continue;
    std::filesystem::copy_file(entry.path(), staged.path() / entry.path().filename());
  }
  weights::write_safetensors_streamed(staged.path() / "model.safetensors", specs,
                                      [&](size_t i) { return makers[i](); },
                                      {{"format", "pt"},
                                       {"producer", "lego quantize " + llm::weight_format_name(format.format) +
                                                        " group " + std::to_string(format.group)}});
  llama_options_to_config(options, cfg);
  fs::write_file_atomically(staged.path() / "model.ini", cfg.to_ini());
  staged.commit();
  return report;
}

}  // namespace lego
