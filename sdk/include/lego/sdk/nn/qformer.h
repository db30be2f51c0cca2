// BLIP-2 style Q-Former: learned queries attend to themselves and, every `cross_attention_freq` layers,
// to an encoder's features; BERT post-LN blocks without the text path (shared/reference/lego-original.md
// sections 1, 3, 4). Registered names follow the released checkpoint (LAVIS BertModel under `bert.`):
// `bert.embeddings.LayerNorm`, `bert.encoder.layer.N.{attention,crossattention}.{self.{query,key,value},
// output.{dense,LayerNorm}}`, `intermediate_query.dense`, `output_query.{dense,LayerNorm}`. The queries
// themselves (`query_tokens`, `video_query_tokens`, ...) belong to the branch that owns the Q-Former.
#pragma once

#include <torch/nn/cloneable.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/normalization.h>
#include <torch/nn/pimpl.h>

#include "lego/sdk/nn/linear.h"

namespace lego::nn {

// Defaults: bert-base-uncased sizes, the BLIP-2 image Q-Former (12 layers, cross-attention every 2nd,
// EVA width 1408).
struct QFormerOptions {
  TORCH_ARG(int64_t, hidden) = 768;
  TORCH_ARG(int64_t, heads) = 12;
  TORCH_ARG(int64_t, intermediate) = 3072;
  TORCH_ARG(int64_t, layers) = 12;
  TORCH_ARG(int64_t, encoder_width) = 1408;
  TORCH_ARG(int64_t, cross_attention_freq) = 2;
  TORCH_ARG(double, layer_norm_eps) = 1e-12;

 public:
  void validate() const;
};

// BERT attention: softmax(QK^T / sqrt(d)) V, then LayerNorm(dense(.) + input).
class BertAttentionImpl : public torch::nn::Cloneable<BertAttentionImpl> {
 public:
  BertAttentionImpl(const QFormerOptions& o, int64_t key_width);
  void reset() override;
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& context);

  Linear query{nullptr}, key{nullptr}, value{nullptr}, dense{nullptr};
  torch::nn::LayerNorm layer_norm{nullptr};

 private:
  QFormerOptions options_;
  int64_t key_width_;
};
TORCH_MODULE(BertAttention);

class QFormerLayerImpl : public torch::nn::Cloneable<QFormerLayerImpl> {
 public:
  QFormerLayerImpl(const QFormerOptions& o, bool cross);
  void reset() override;
  torch::Tensor forward(const torch::Tensor& queries, const torch::Tensor& encoder_states);

  BertAttention attention{nullptr}, crossattention{nullptr};
  Linear intermediate{nullptr}, output{nullptr};
  torch::nn::LayerNorm output_norm{nullptr};

 private:
  QFormerOptions options_;
  bool cross_;
};
TORCH_MODULE(QFormerLayer);

class QFormerImpl : public torch::nn::Cloneable<QFormerImpl> {
 public:
  explicit QFormerImpl(const QFormerOptions& o);
  void reset() override;
  // queries [B, Q, hidden], encoder_states [B, S, encoder_width] -> [B, Q, hidden]
  torch::Tensor forward(const torch::Tensor& queries, const torch::Tensor& encoder_states);

  const QFormerOptions& options() const { return options_; }

  torch::nn::LayerNorm embeddings_norm{nullptr};
  torch::nn::ModuleList layers{nullptr};  // of QFormerLayer, registered as `bert.encoder.layer`

 private:
  QFormerOptions options_;
};
TORCH_MODULE(QFormer);

}  // namespace lego::nn
