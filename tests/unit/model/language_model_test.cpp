// Opening model directories: every missing or inconsistent piece is refused with its name.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "lego/model/language_model.h"
#include "lego/weights/tensor_source.h"
#include "tiny_model.h"

namespace lego {
namespace {

using lego::testing::expect_error;
using lego::testing::TempDir;
using lego::testing::tiny_model_dir;

// A copy of the tiny model whose weights are rewritten by `edit`.
std::filesystem::path edited_copy(const TempDir& dir,
                                  const std::function<void(std::vector<std::pair<std::string, at::Tensor>>&)>& edit) {
  const auto out = dir / "m";
  std::filesystem::create_directories(out);
  for (const char* f : {"model.ini", "tokenizer.model"}) std::filesystem::copy_file(tiny_model_dir() / f, out / f);
  auto src = weights::open_tensor_source(tiny_model_dir());
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  for (const auto& n : src->names()) tensors.emplace_back(n, src->get(n).clone());
  edit(tensors);
  weights::write_safetensors(out / "model.safetensors", tensors);
  return out;
}

TEST(LanguageModel, LoadsTheTinyModel) {
  auto m = LanguageModel::load(tiny_model_dir());
  EXPECT_EQ(m.options.vocab_size(), 521);
  EXPECT_EQ(m.options.kv_heads(), 2);
}

TEST(LanguageModel, MissingModelDirectoryIsRefused) {
  expect_error([] { LanguageModel::load("/no/such/model"); }, ErrorKind::NotFound, {"/no/such/model"});
}

TEST(LanguageModel, MissingTensorIsNamed) {
  TempDir dir;
  auto m = edited_copy(dir, [](auto& t) {
    std::erase_if(t, [](const auto& p) { return p.first == "model.layers.1.mlp.up_proj.weight"; });
  });
  expect_error([&] { LanguageModel::load(m); }, ErrorKind::NotFound, {"model.safetensors", "model.layers.1.mlp.up_proj.weight"});
}

TEST(LanguageModel, WrongShapeIsNamedWithBothShapes) {
  TempDir dir;
  auto m = edited_copy(dir, [](auto& t) {
    for (auto& [name, tensor] : t) {
      if (name == "model.norm.weight") tensor = torch::ones({63});
    }
  });
  expect_error([&] { LanguageModel::load(m); }, ErrorKind::Format, {"model.norm.weight", "[63]", "[64]"});
}

TEST(LanguageModel, VocabularyDisagreeingWithTheTokenizerIsRefused) {
  TempDir dir;
  auto m = edited_copy(dir, [](auto&) {});
  auto cfg = config::read_file(m / "model.ini");
  cfg.set("llm.vocab_size", "600");
  lego::testing::write_bytes(m / "model.ini", cfg.to_ini());
  expect_error([&] { LanguageModel::load(m); }, ErrorKind::Format, {"model.ini", "600", "521"});
}

TEST(LanguageModel, LoadsInBfloat16) {
  auto m = LanguageModel::load(tiny_model_dir(), {torch::kCPU, torch::kBFloat16, {}});
  EXPECT_EQ(m.net->model->embed_tokens->weight.scalar_type(), torch::kBFloat16);
  torch::NoGradGuard ng;
  llm::AttentionContext ctx;
  ctx.positions = torch::arange(4).unsqueeze(0);
  auto out = m.net->forward(m.net->model->embed(torch::tensor({{1, 5, 6, 7}}, torch::kInt64)), ctx);
  EXPECT_EQ(out.scalar_type(), torch::kBFloat16);
  EXPECT_TRUE(torch::isfinite(out).all().item<bool>());
}

TEST(LanguageModel, IntegerTensorsAreNotConvertedToWeights) {
  TempDir dir;
  auto m = edited_copy(dir, [](auto& t) {
    for (auto& [name, tensor] : t) {
      if (name == "model.norm.weight") tensor = tensor.to(torch::kInt32);
    }
  });
  expect_error([&] { LanguageModel::load(m); }, ErrorKind::Format, {"model.norm.weight", "Int", "floating-point"});
}

TEST(LanguageModel, LanguageModelTensorsWithoutAPlaceAreAnError) {
  TempDir dir;
  auto m = edited_copy(dir, [](auto&) {});
  auto cfg = config::read_file(m / "model.ini");
  cfg.set("llm.num_layers", "1");  // the weights have two
  lego::testing::write_bytes(m / "model.ini", cfg.to_ini());
  expect_error([&] { LanguageModel::load(m); }, ErrorKind::Format, {"model.layers.1.", "num_layers"});
  cfg.set("llm.num_layers", "2");
  cfg.set("llm.tie_word_embeddings", "true");  // lm_head.weight present
  lego::testing::write_bytes(m / "model.ini", cfg.to_ini());
  expect_error([&] { LanguageModel::load(m); }, ErrorKind::Format, {"lm_head.weight"});
}

TEST(LanguageModel, UnknownKeysOfItsSectionsAreAnError) {
  TempDir dir;
  auto m = edited_copy(dir, [](auto&) {});
  auto cfg = config::read_file(m / "model.ini");
  cfg.set("llm.rope_scaling_factr", "2");
  lego::testing::write_bytes(m / "model.ini", cfg.to_ini());
  expect_error([&] { LanguageModel::load(m); }, ErrorKind::Format, {"model.ini", "llm.rope_scaling_factr"});
}

TEST(LanguageModel, DevicesOtherThanCpuAndCudaAreRefusedByName) {
  expect_error([] { parse_device("mps"); }, ErrorKind::InvalidArgument, {"--device 'mps'"});
  expect_error([] { parse_device("gpu"); }, ErrorKind::InvalidArgument, {"--device 'gpu'"});
  EXPECT_TRUE(parse_device("cuda:1").is_cuda());
}

}  // namespace
}  // namespace lego
