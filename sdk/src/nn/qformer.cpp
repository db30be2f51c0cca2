#include "lego/sdk/nn/qformer.h"

#include <ATen/ATen.h>

#include <memory>
#include <string>

#include "lego/sdk/error.h"
#include "lego/sdk/nn/attention.h"
#include "lego/sdk/nn/nest.h"

namespace lego::nn {
void QFormerOptions::validate() const {
  if (hidden_ <= 0 || heads_ <= 0 || hidden_ % heads_ != 0) {
    throw Error(ErrorKind::InvalidArgument, "qformer options: hidden (" + std::to_string(hidden_) +
                                                ") must be a positive multiple of heads (" + std::to_string(heads_) + ")");
  }
  if (layers_ <= 0 || intermediate_ <= 0 || encoder_width_ <= 0 || cross_attention_freq_ <= 0) {
    throw Error(ErrorKind::InvalidArgument, "qformer options: layers, intermediate, encoder_width and "
                                            "cross_attention_freq must be positive");
  }
}

BertAttentionImpl::BertAttentionImpl(const QFormerOptions& o, int64_t key_width) : options_(o), key_width_(key_width) {
  reset();
}

void BertAttentionImpl::reset() {
  const int64_t h = options_.hidden();
  auto self = register_module("self", Nest());
  query = self->register_module("query", Linear(LinearOptions(h, h)));
  key = self->register_module("key", Linear(LinearOptions(key_width_, h)));
  value = self->register_module("value", Linear(LinearOptions(key_width_, h)));
  auto output = register_module("output", Nest());
  dense = output->register_module("dense", Linear(LinearOptions(h, h)));
  layer_norm = output->register_module("LayerNorm", make_layer_norm(h, options_.layer_norm_eps()));
}

torch::Tensor BertAttentionImpl::forward(const torch::Tensor& x, const torch::Tensor& context) {
  const int64_t b = x.size(0), heads = options_.heads(), d = options_.hidden() / heads;
  auto split = [&](const torch::Tensor& y) { return y.view({b, y.size(1), heads, d}).transpose(1, 2); };
  auto out = nn::attention(split(query(x)), split(key(context)), split(value(context)));
  out = out.transpose(1, 2).reshape({b, x.size(1), options_.hidden()});
  return layer_norm(dense(out) + x);
}

QFormerLayerImpl::QFormerLayerImpl(const QFormerOptions& o, bool cross) : options_(o), cross_(cross) { reset(); }

void QFormerLayerImpl::reset() {
  attention = register_module("attention", BertAttention(options_, options_.hidden()));
  if (cross_) crossattention = register_module("crossattention", BertAttention(options_, options_.encoder_width()));
  auto inter = register_module("intermediate_query", Nest());
  intermediate = inter->register_module("dense", Linear(LinearOptions(options_.hidden(), options_.intermediate())));
  auto out = register_module("output_query", Nest());
  output = out->register_module("dense", Linear(LinearOptions(options_.intermediate(), options_.hidden())));
  output_norm = out->register_module("LayerNorm", make_layer_norm(options_.hidden(), options_.layer_norm_eps()));
}

torch::Tensor QFormerLayerImpl::forward(const torch::Tensor& queries, const torch::Tensor& encoder_states) {
  auto h = attention(queries, queries);
  if (cross_) h = crossattention(h, encoder_states);
  return output_norm(output(torch::gelu(intermediate(h))) + h);
}

QFormerImpl::QFormerImpl(const QFormerOptions& o) : options_(o) {
  options_.validate();
  reset();
}

void QFormerImpl::reset() {
  auto bert = register_module("bert", Nest());
  auto embeddings = bert->register_module("embeddings", Nest());
  embeddings_norm = embeddings->register_module("LayerNorm", make_layer_norm(options_.hidden(), options_.layer_norm_eps()));
  auto encoder = bert->register_module("encoder", Nest());
  // The layers live only in the list: clone() refills it with copies, which a second container of
  // pointers would not see.
  layers = encoder->register_module("layer", torch::nn::ModuleList());
  for (int64_t i = 0; i < options_.layers(); ++i) {
    layers->push_back(QFormerLayer(options_, i % options_.cross_attention_freq() == 0));
  }
}

torch::Tensor QFormerImpl::forward(const torch::Tensor& queries, const torch::Tensor& encoder_states) {
  auto h = embeddings_norm(queries);
  const auto enc = encoder_states.to(h.scalar_type());
  for (size_t i = 0; i < layers->size(); ++i) h = layers->at<QFormerLayerImpl>(i).forward(h, enc);
  return h;
}

}  // namespace lego::nn
