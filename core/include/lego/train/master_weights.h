// Master weights: the fp32 tensors an optimizer steps when the model itself is held in bf16 (DeepSpeed's
// bf16 mode, which the paper trained with; `train.precision = bf16`, docs/training.md). Forward and backward
// run on the model's bf16 parameters and leave bf16 gradients; before the optimizer step the gradients are
// taken into fp32 beside an fp32 copy of each trained tensor, and after it each copy is rounded back into
// the model. A parameter that is fp32 already is its own master: no copy, nothing to take or write back,
// so an fp32 run goes through the same code unchanged. Part of liblego_llm (libtorch alone), so that the
// GPU check's training step runs the same code as `lego train`.
#pragma once

#include <torch/types.h>

#include <vector>

namespace lego::train {

class MasterWeights {
 public:
  // `params`: the model's trained parameters, in order; `keep[i]`: whether this rank steps params[i] (all of
  // them without ZeRO; its own share with it). Each kept bf16/fp16 parameter gets an fp32 copy.
  MasterWeights(std::vector<torch::Tensor> params, const std::vector<bool>& keep);

  // The tensors the optimizer steps, one per kept parameter in order: the fp32 copies, or the parameters
  // themselves where they are fp32.
  const std::vector<torch::Tensor>& stepped() const { return stepped_; }
  // The fp32 tensor that holds params[i]'s value (its copy, or itself); undefined where it is not kept.
  torch::Tensor master_of(size_t i) const { return master_[i]; }
  // Whether any kept parameter has an fp32 copy (the model is held in a half type).
  bool copies() const { return copies_; }
  int64_t copy_bytes() const;

  // Before the optimizer step: each copy's .grad becomes its parameter's gradient in fp32 (undefined where
  // the parameter has none), and the parameter's own gradient is released.
  void take_gradients();
  // After the optimizer step: each parameter becomes its copy rounded to the parameter's dtype.
  void write_back();

 private:
  bool has_copy(size_t i) const { return master_[i].defined() && !master_[i].is_same(params_[i]); }

  std::vector<torch::Tensor> params_;
  std::vector<torch::Tensor> master_;   // per parameter: its fp32 copy, itself, or undefined (not kept)
  std::vector<torch::Tensor> stepped_;  // the defined ones of master_, in order
  bool copies_ = false;
};

}  // namespace lego::train
