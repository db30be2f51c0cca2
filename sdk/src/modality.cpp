#include "lego/sdk/modality.h"

#include <torch/torch.h>

#include "lego/sdk/error.h"

namespace lego {

const at::Tensor& MediaBatch::at(const std::string& name) const {
  auto it = tensors.find(name);
  if (it == tensors.end()) {
    std::string have;
    for (const auto& [k, v] : tensors) have += (have.empty() ? "" : ", ") + k;
    throw Error(ErrorKind::InvalidArgument, "media batch has no tensor '" + name + "' (it has: " +
                                                (have.empty() ? "none" : have) + ")");
  }
  return it->second;
}

std::vector<WeightSpec> Modality::weights() const {
  // The parameter lists are made by non-const accessors; listing them changes nothing.
  auto* self = const_cast<Modality*>(this);
  auto params = self->encoder_parameters();
  auto adapter = self->adapter_parameters();
  params.insert(params.end(), adapter.begin(), adapter.end());
  std::vector<WeightSpec> out;
  for (const auto& p : params) out.push_back(WeightSpec{p.first, p.second.sizes().vec()});
  return out;
}

MediaBatch Modality::collate(const std::vector<Media>& media) const {
  if (media.empty()) throw Error(ErrorKind::InvalidArgument, name() + ": collate of no media");
  std::vector<at::Tensor> tensors;
  tensors.reserve(media.size());
  for (const auto& m : media) {
    if (!m.tensor.defined()) throw Error(ErrorKind::InvalidArgument, m.path.string() + ": medium has no tensor");
    if (m.tensor.sizes() != media.front().tensor.sizes()) {
      throw Error(ErrorKind::InvalidArgument, name() + ": cannot stack " + m.path.string() + " of shape " +
                                                  shape_string(m.tensor.sizes()) + " with " +
                                                  media.front().path.string() + " of shape " +
                                                  shape_string(media.front().tensor.sizes()));
    }
    tensors.push_back(m.tensor);
  }
  MediaBatch batch;
  batch.size = static_cast<int64_t>(media.size());
  batch.tensors["input"] = at::stack(tensors);
  return batch;
}

MappedBox Modality::map_box(const Media& media, const std::vector<double>&) const {
  throw Error(ErrorKind::Unsupported, name() + ": " + media.path.string() + " cannot carry boxes");
}

MappedSpan Modality::map_span(const Media& media, double, double) const {
  throw Error(ErrorKind::Unsupported, name() + ": " + media.path.string() + " cannot carry time spans");
}

bool Modality::render(const Media&, const std::vector<GroundedPhrase>&, const std::filesystem::path&) const {
  return false;
}

std::optional<ImportPlan> Modality::plan_import(const ImportContext&) const { return std::nullopt; }

void EncoderAdapterModality::set_parts(std::shared_ptr<torch::nn::Module> encoder, std::string encoder_prefix,
                                       std::shared_ptr<torch::nn::Module> adapter, std::string adapter_prefix) {
  encoder_ = std::move(encoder);
  adapter_ = std::move(adapter);
  encoder_prefix_ = std::move(encoder_prefix);
  adapter_prefix_ = std::move(adapter_prefix);
  encoder_->eval();
  adapter_->eval();
}

void EncoderAdapterModality::train(bool on) {
  Modality::train(on);
  encoder_->eval();  // frozen: dropout and the like stay off even while the adapter trains
  adapter_->train(on);
}

void EncoderAdapterModality::load_weights(const TensorSource& source, at::ScalarType dtype, c10::Device device) {
  load_module(*encoder_, source, encoder_prefix_, dtype);
  load_module(*adapter_, source, adapter_prefix_, dtype);
  encoder_->to(device);
  adapter_->to(device);
}

std::vector<std::pair<std::string, at::Tensor>> EncoderAdapterModality::encoder_parameters() {
  return prefixed_parameters(*encoder_, encoder_prefix_);
}

std::vector<std::pair<std::string, at::Tensor>> EncoderAdapterModality::adapter_parameters() {
  return prefixed_parameters(*adapter_, adapter_prefix_);
}

at::TensorOptions EncoderAdapterModality::weight_options() {
  const at::Tensor w = adapter_->parameters().front();
  return w.options();
}

}  // namespace lego
