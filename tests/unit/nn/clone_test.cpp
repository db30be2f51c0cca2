// clone() of every SDK and LLM module computes exactly what the original computes, and owns its
// weights: changing the original afterwards leaves the clone's output as it was. Layers kept beside
// their ModuleList, or modules registered inside plain holder modules, used to come out of clone()
// fresh and uninitialised.
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "lego/llm/llama.h"
#include "lego/sdk/nn/clip_vision.h"
#include "lego/sdk/nn/eva_vit.h"
#include "lego/sdk/nn/imagebind_audio.h"
#include "lego/sdk/nn/linear.h"
#include "lego/sdk/nn/nest.h"
#include "lego/sdk/nn/projector.h"
#include "lego/sdk/nn/qformer.h"
#include "lego/sdk/nn/temporal_position.h"

namespace lego::nn {
namespace {

// init_normal leaves biases at 0 and norm scales at 1; a copy that missed one of those would still
// compute the same, so every parameter gets its own small random offset on top.
void fill(torch::nn::Module& m, uint64_t seed) {
  init_normal(m, 0.02, seed);
  torch::NoGradGuard no_grad;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed + 1);
  for (auto& p : m.parameters())
    p.add_(torch::empty(p.sizes(), torch::kFloat32).normal_(0.0, 0.02, gen));
}

bool finite(const torch::Tensor& t) {
  return !t.isnan().any().item<bool>() && !t.isinf().any().item<bool>();
}

// Runs the module under test on its fixed input; one module may give several outputs.
template <typename Impl>
using Runner = std::function<std::vector<torch::Tensor>(Impl&)>;

template <typename Impl>
void expect_clone_is_faithful(const std::shared_ptr<Impl>& original, uint64_t seed,
                              const Runner<Impl>& run,
                              const std::vector<std::string>& expected_names) {
  torch::NoGradGuard no_grad;
  fill(*original, seed);
  original->eval();
  const auto reference = run(*original);
  for (const auto& r : reference) ASSERT_TRUE(finite(r)) << "the original's output is not finite";

  const auto names = original->named_parameters().keys();
  for (const auto& n : expected_names) {
    EXPECT_NE(std::find(names.begin(), names.end(), n), names.end()) << "no parameter named " << n;
  }

  std::vector<std::pair<std::string, std::shared_ptr<Impl>>> clones;
  clones.emplace_back("clone()", std::dynamic_pointer_cast<Impl>(original->clone()));
  clones.emplace_back("clone(cpu)",
                      std::dynamic_pointer_cast<Impl>(original->clone(torch::Device(torch::kCPU))));
  for (const auto& [how, copy] : clones) {
    ASSERT_NE(copy, nullptr) << how;
    EXPECT_EQ(copy->named_parameters().keys(), names) << how << ": registered names changed";
    EXPECT_FALSE(copy->is_training()) << how;
    const auto out = run(*copy);
    ASSERT_EQ(out.size(), reference.size());
    for (size_t i = 0; i < out.size(); ++i) {
      EXPECT_TRUE(finite(out[i])) << how << ", output " << i << " is not finite";
      EXPECT_TRUE(torch::equal(out[i], reference[i]))
          << how << ", output " << i << " differs from the original's by up to "
          << (out[i] - reference[i]).abs().max().template item<float>();
    }
  }

  // The clones must own their weights: moving the original's must not move theirs.
  for (auto& p : original->parameters()) p.add_(1.0);
  const auto moved = run(*original);
  bool changed = false;
  for (size_t i = 0; i < moved.size(); ++i)
    changed = changed || !torch::equal(moved[i], reference[i]);
  ASSERT_TRUE(changed) << "changing the original's parameters must change its output";
  for (const auto& [how, copy] : clones) {
    const auto out = run(*copy);
    for (size_t i = 0; i < out.size(); ++i) {
      EXPECT_TRUE(torch::equal(out[i], reference[i]))
          << how << ", output " << i << " moved with the original's weights";
    }
  }
}

torch::Tensor input(std::vector<int64_t> shape, uint64_t seed) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  return torch::empty(shape, torch::kFloat32).normal_(0.0, 1.0, gen);
}

TEST(Clone, Llama) {
  auto options = llm::LlamaOptions(97, 32, 64, 3, 4).num_kv_heads(2).max_position(64);
  auto ids = torch::tensor({{5, 17, 3, 96, 0, 41, 8}, {2, 2, 60, 7, 33, 1, 90}}, torch::kInt64);
  Runner<llm::LlamaForCausalLMImpl> run = [&](llm::LlamaForCausalLMImpl& m) {
    llm::AttentionContext ctx;
    ctx.positions = torch::arange(ids.size(1)).unsqueeze(0).expand({ids.size(0), -1});
    return std::vector<torch::Tensor>{m.forward(m.model->embed(ids), ctx)};
  };
  expect_clone_is_faithful(
      std::make_shared<llm::LlamaForCausalLMImpl>(options), 11, run,
      {"model.layers.2.self_attn.k_proj.weight", "model.norm.weight", "lm_head.weight"});
}

void qformer_case(int64_t cross_freq) {
  auto options = QFormerOptions()
                     .hidden(32)
                     .heads(4)
                     .intermediate(48)
                     .layers(3)
                     .encoder_width(24)
                     .cross_attention_freq(cross_freq);
  const auto queries = input({2, 5, 32}, 1), features = input({2, 7, 24}, 2);
  Runner<QFormerImpl> run = [&](QFormerImpl& m) {
    return std::vector<torch::Tensor>{m.forward(queries, features)};
  };
  expect_clone_is_faithful(
      std::make_shared<QFormerImpl>(options), 12, run,
      {"bert.embeddings.LayerNorm.weight", "bert.encoder.layer.0.attention.self.query.weight",
       "bert.encoder.layer.2.crossattention.output.LayerNorm.bias",
       "bert.encoder.layer.1.output_query.dense.bias"});
}

TEST(Clone, QFormerWithCrossAttentionEverySecondLayer) { qformer_case(2); }
TEST(Clone, QFormerWithCrossAttentionInEveryLayer) { qformer_case(1); }

TEST(Clone, EvaVisionTransformer) {
  auto options =
      EvaVisionOptions().image_size(28).patch_size(14).width(32).layers(2).heads(4).mlp_dim(48);
  const auto pixels = input({2, 3, 28, 28}, 3);
  Runner<EvaVisionTransformerImpl> run = [&](EvaVisionTransformerImpl& m) {
    return std::vector<torch::Tensor>{m.forward(pixels)};
  };
  expect_clone_is_faithful(
      std::make_shared<EvaVisionTransformerImpl>(options), 13, run,
      {"cls_token", "patch_embed.proj.weight", "blocks.1.attn.qkv.weight", "blocks.1.attn.q_bias",
       "blocks.0.attn.v_bias", "blocks.0.mlp.fc2.weight"});
}

TEST(Clone, ClipVisionTransformer) {
  auto options =
      ClipVisionOptions().image_size(28).patch_size(14).width(32).layers(3).heads(4).mlp_dim(48);
  const auto pixels = input({2, 3, 28, 28}, 4);
  // The image branch's feature is the second to last hidden state; the last one runs every layer.
  Runner<ClipVisionTransformerImpl> run = [&](ClipVisionTransformerImpl& m) {
    return std::vector<torch::Tensor>{m.hidden_state(pixels, -2), m.hidden_state(pixels, -1)};
  };
  expect_clone_is_faithful(
      std::make_shared<ClipVisionTransformerImpl>(options), 14, run,
      {"embeddings.class_embedding", "encoder.layers.2.self_attn.q_proj.weight",
       "encoder.layers.0.mlp.fc1.bias", "post_layernorm.weight"});
}

TEST(Clone, ImageBindAudioEncoder) {
  auto options = ImageBindAudioOptions()
                     .mel_bins(32)
                     .target_length(36)
                     .width(32)
                     .layers(2)
                     .heads(4)
                     .mlp_dim(48)
                     .out_dim(16);
  const auto fbank = input({2, 1, 32, 36}, 5);
  Runner<ImageBindAudioEncoderImpl> run = [&](ImageBindAudioEncoderImpl& m) {
    return std::vector<torch::Tensor>{m.forward(fbank)};
  };
  expect_clone_is_faithful(std::make_shared<ImageBindAudioEncoderImpl>(options), 15, run,
                           {"modality_preprocessors.audio.cls_token",
                            "modality_preprocessors.audio.rgbt_stem.proj.weight",
                            "modality_preprocessors.audio.pos_embedding_helper.pos_embed",
                            "modality_trunks.audio.blocks.1.attn.bias_k",
                            "modality_trunks.audio.blocks.0.mlp.fc1.weight",
                            "modality_heads.audio.0.weight", "modality_heads.audio.2.weight"});
}

TEST(Clone, Projector) {
  const auto x = input({2, 5, 16}, 6);
  Runner<ProjectorImpl> run = [&](ProjectorImpl& m) {
    return std::vector<torch::Tensor>{m.forward(x)};
  };
  expect_clone_is_faithful(
      std::make_shared<ProjectorImpl>(ProjectorOptions(16, 24).type("mlp2x_gelu")), 16, run,
      {"0.weight", "2.bias"});
}

TEST(Clone, TemporalPositionEmbedding) {
  const auto x = input({2, 3, 4, 16}, 7);
  Runner<TemporalPositionEmbeddingImpl> run = [&](TemporalPositionEmbeddingImpl& m) {
    return std::vector<torch::Tensor>{m.forward(x)};
  };
  expect_clone_is_faithful(std::make_shared<TemporalPositionEmbeddingImpl>(8, 16), 17, run,
                           {"weight"});
}

TEST(Clone, NestOnItsOwnCopiesEverythingInside) {
  Nest nest;
  nest->register_parameter("scale", torch::full({3}, 2.0f));
  nest->register_buffer("count", torch::tensor({7}, torch::kInt64));
  auto inner = nest->register_module("inner", Nest());
  inner->register_parameter("frozen", torch::full({2}, 3.0f), /*requires_grad=*/false);
  inner->register_module("proj", Linear(LinearOptions(3, 2)));
  fill(*nest, 18);
  nest->eval();

  auto copy = std::dynamic_pointer_cast<NestImpl>(nest->clone());
  ASSERT_NE(copy, nullptr);
  EXPECT_FALSE(copy->is_training());
  const auto mine = nest->named_parameters(), theirs = copy->named_parameters();
  ASSERT_EQ(theirs.keys(), mine.keys());
  for (const auto& p : mine) {
    EXPECT_TRUE(torch::equal(theirs[p.key()], p.value())) << p.key();
    EXPECT_NE(theirs[p.key()].data_ptr(), p.value().data_ptr()) << p.key() << " is shared";
    EXPECT_EQ(theirs[p.key()].requires_grad(), p.value().requires_grad()) << p.key();
  }
  EXPECT_TRUE(torch::equal(copy->named_buffers()["count"], torch::tensor({7}, torch::kInt64)));
}

// init_fan_in: each tensor N(0, gain^2 / fan_in), fan_in a matrix's input width or a kernel's input
// channels times its window; biases 0 and norm scales 1 as with init_normal; the same seed, the same draw.
TEST(Init, FanInScalesEachTensorByItsInputWidth) {
  Nest m;
  m->register_module("wide", Linear(LinearOptions(1024, 64)));
  m->register_module("narrow", Linear(LinearOptions(16, 64)));
  m->register_module("patch", torch::nn::Conv2d(torch::nn::Conv2dOptions(3, 64, 8)));
  m->register_module("norm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({64})));
  m->register_parameter("table", torch::empty({600, 256}));
  init_fan_in(*m, 2.0, 5);
  auto params = m->named_parameters();
  auto std_of = [&](const std::string& n) { return params[n].std().item<double>(); };
  EXPECT_NEAR(std_of("wide.weight"), 2.0 / 32, 0.003);
  EXPECT_NEAR(std_of("narrow.weight"), 2.0 / 4, 0.03);
  EXPECT_NEAR(std_of("patch.weight"), 2.0 / std::sqrt(3.0 * 8 * 8), 0.006);
  EXPECT_NEAR(std_of("table"), 2.0 / 16, 0.003);
  EXPECT_TRUE(torch::equal(params["wide.bias"], torch::zeros({64})));
  EXPECT_TRUE(torch::equal(params["norm.weight"], torch::ones({64})));
  EXPECT_TRUE(torch::equal(params["norm.bias"], torch::zeros({64})));
  const auto first = params["table"].clone();
  init_fan_in(*m, 2.0, 5);
  EXPECT_TRUE(torch::equal(m->named_parameters()["table"], first));
}

}  // namespace
}  // namespace lego::nn
