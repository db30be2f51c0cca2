#include "lego/sdk/nn/temporal_position.h"

#include <string>

#include "lego/sdk/error.h"
#include "lego/sdk/nn/linear.h"

namespace lego::nn {

TemporalPositionEmbeddingImpl::TemporalPositionEmbeddingImpl(int64_t positions, int64_t width)
    : positions_(positions), width_(width) {
  reset();
}

void TemporalPositionEmbeddingImpl::reset() { weight = register_parameter("weight", uninitialised({positions_, width_}, "position embedding")); }

torch::Tensor TemporalPositionEmbeddingImpl::forward(const torch::Tensor& x) {
  const int64_t steps = x.size(1);
  if (steps > positions_) {
    throw Error(ErrorKind::InvalidArgument, "temporal position embedding: " + std::to_string(steps) +
                                                " steps exceed its " + std::to_string(positions_) + " positions");
  }
  std::vector<int64_t> shape(static_cast<size_t>(x.dim()), 1);
  shape[1] = steps;
  shape.back() = width_;
  return x + weight.narrow(0, 0, steps).view(shape);
}

}  // namespace lego::nn
