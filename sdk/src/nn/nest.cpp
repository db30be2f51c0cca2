#include "lego/sdk/nn/nest.h"

#include <torch/nn/cloneable.h>

#include <string>
#include <utility>
#include <vector>

#include "lego/sdk/error.h"

namespace lego::nn {
namespace {

using NamedModules = std::vector<std::pair<std::string, std::shared_ptr<torch::nn::Module>>>;

// torch lets only Module and its Cloneables call a module's clone_, so a nest reaches its
// children's through this Cloneable: it holds the source children, and the copy that its clone()
// makes registers the targets in reset(); clone() then calls target->clone_(source) for each name.
class ChildRelayImpl : public torch::nn::Cloneable<ChildRelayImpl> {
 public:
  ChildRelayImpl(const NamedModules& sources, NamedModules targets) : targets_(std::move(targets)) {
    for (const auto& [name, module] : sources) register_module(name, module);
  }
  void reset() override {
    for (const auto& [name, module] : targets_) register_module(name, module);
  }

 private:
  NamedModules targets_;
};

// As Cloneable copies a tensor: a move to another device is already a copy.
torch::Tensor copy_of(const torch::Tensor& t, const std::optional<torch::Device>& device) {
  if (!t.defined()) return t;
  return device && t.device() != *device ? t.to(*device) : t.clone();
}

std::string joined(const std::vector<std::string>& names) {
  std::string out;
  for (const auto& n : names) out += (out.empty() ? "" : ", ") + n;
  return "[" + out + "]";
}

void require_same(const std::vector<std::string>& mine, const std::vector<std::string>& theirs,
                  const std::string& what) {
  if (mine != theirs) {
    throw Error(ErrorKind::InvalidArgument, "nest: cannot copy " + what + " " + joined(theirs) +
                                                " into a nest that has " + joined(mine));
  }
}

// Copies `theirs` into the tensors of `mine` in place: members that alias them see the copies.
void copy_into(torch::OrderedDict<std::string, torch::Tensor> mine,
               const torch::OrderedDict<std::string, torch::Tensor>& theirs,
               const std::optional<torch::Device>& device, const std::string& what) {
  require_same(mine.keys(), theirs.keys(), what);
  for (const auto& item : theirs) mine[item.key()].set_data(copy_of(item.value(), device));
}

}  // namespace

std::shared_ptr<torch::nn::Module> NestImpl::clone(
    const std::optional<torch::Device>& device) const {
  torch::NoGradGuard no_grad;
  auto copy = std::make_shared<NestImpl>();
  copy->train(is_training());  // before the children, which bring their own mode
  for (const auto& p : named_parameters(/*recurse=*/false)) {
    copy->register_parameter(p.key(), copy_of(p.value(), device), p.value().requires_grad());
  }
  for (const auto& b : named_buffers(/*recurse=*/false)) {
    copy->register_buffer(b.key(), copy_of(b.value(), device));
  }
  for (const auto& c : named_children()) copy->register_module(c.key(), c.value()->clone(device));
  return copy;
}

void NestImpl::clone_(torch::nn::Module& other, const std::optional<torch::Device>& device) {
  torch::NoGradGuard no_grad;
  copy_into(named_parameters(/*recurse=*/false), other.named_parameters(/*recurse=*/false), device,
            "parameters");
  copy_into(named_buffers(/*recurse=*/false), other.named_buffers(/*recurse=*/false), device,
            "buffers");
  train(other.is_training());  // the children's clone_ below then set their own mode

  const auto mine = named_children();
  const auto theirs = other.named_children();
  require_same(mine.keys(), theirs.keys(), "modules");
  if (mine.is_empty()) return;
  NamedModules sources, targets;
  for (const auto& c : theirs) sources.emplace_back(c.key(), c.value());
  for (const auto& c : mine) targets.emplace_back(c.key(), c.value());
  ChildRelayImpl(sources, std::move(targets)).clone(device);
}

}  // namespace lego::nn
