// Temporal position embedding: a learned vector per time step (video frame, audio clip) added to every
// feature of that step (shared/reference/lego-original.md sections 3 and 4: `video_frame_position_embedding`
// Embedding(64, 768) over the 32 queries of each frame; `audio_position_embedding` Embedding(8, 1024) over
// the 3 clips). The parameter is `weight` [positions, width], as in nn.Embedding.
#pragma once

#include <torch/nn/cloneable.h>
#include <torch/nn/pimpl.h>

namespace lego::nn {

class TemporalPositionEmbeddingImpl : public torch::nn::Cloneable<TemporalPositionEmbeddingImpl> {
 public:
  TemporalPositionEmbeddingImpl(int64_t positions, int64_t width);
  void reset() override;
  // x [B, T, ..., width] -> x + weight[t] for each step t (broadcast over the middle dimensions).
  // More steps than positions throws lego::Error (the released model would index past its table).
  torch::Tensor forward(const torch::Tensor& x);

  int64_t positions() const { return positions_; }

  torch::Tensor weight;

 private:
  int64_t positions_;
  int64_t width_;
};
TORCH_MODULE(TemporalPositionEmbedding);

}  // namespace lego::nn
