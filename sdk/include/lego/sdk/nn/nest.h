// Nest: a module that only groups others under a name, so that registered names match a
// checkpoint's (`bert.encoder.layer.0.attention.self.query`, `blocks.0.attn.q_bias`) without a
// class per level.
//
// The module that builds a nest keeps its own pointers to what it registers inside (`query`,
// `fc1`). torch's Cloneable::clone rebuilds that module with reset() and then asks each child to
// take on the original child's state; a plain torch::nn::Module ignores the request, so its contents
// stayed fresh and uninitialised in every clone. A Nest copies the other nest's parameters and
// buffers into its own and has each child copy itself in place, so the builder's pointers end up
// at the copies.
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include <memory>
#include <optional>

namespace lego::nn {

class NestImpl : public torch::nn::Module {
 public:
  NestImpl() = default;

  // A deep copy of a nest on its own: every child through its own clone().
  std::shared_ptr<torch::nn::Module> clone(
      const std::optional<torch::Device>& device = std::nullopt) const override;

 private:
  // Called by a Cloneable parent's clone() on the nest its reset() just built: copies `other`'s
  // state into this nest and its existing children in place. Throws lego::Error if their contents
  // differ.
  void clone_(torch::nn::Module& other, const std::optional<torch::Device>& device) override;
};
TORCH_MODULE(Nest);

}  // namespace lego::nn
