#include "lego/sdk/modality.h"

#include "lego/sdk/error.h"

namespace lego {

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

void EncoderAdapterModality::set_parts(std::shared_ptr<torch::nn::Module> encoder, std::string encoder_prefix,
                                       std::shared_ptr<torch::nn::Module> adapter, std::string adapter_prefix) {
  encoder_ = std::move(encoder);
  adapter_ = std::move(adapter);
  encoder_prefix_ = std::move(encoder_prefix);
  adapter_prefix_ = std::move(adapter_prefix);
  encoder_->eval();
  adapter_->eval();
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

std::string ModalityConfig::get(const std::string& key) const {
  auto it = options.find(key);
  if (it == options.end()) throw Error(ErrorKind::NotFound, "modality config: missing key '" + key + "'");
  return it->second;
}

std::string ModalityConfig::get(const std::string& key, const std::string& fallback) const {
  auto it = options.find(key);
  return it == options.end() ? fallback : it->second;
}

int64_t ModalityConfig::get_int(const std::string& key) const {
  const std::string v = get(key);
  try {
    size_t used = 0;
    const int64_t out = std::stoll(v, &used);
    if (used == v.size()) return out;
  } catch (const std::logic_error&) {
  }
  throw Error(ErrorKind::Format, "modality config: key '" + key + "' = '" + v + "' is not an integer");
}

int64_t ModalityConfig::get_int(const std::string& key, int64_t fallback) const {
  return options.count(key) ? get_int(key) : fallback;
}

double ModalityConfig::get_double(const std::string& key, double fallback) const {
  if (!options.count(key)) return fallback;
  const std::string v = get(key);
  try {
    size_t used = 0;
    const double out = std::stod(v, &used);
    if (used == v.size()) return out;
  } catch (const std::logic_error&) {
  }
  throw Error(ErrorKind::Format, "modality config: key '" + key + "' = '" + v + "' is not a number");
}

bool ModalityConfig::get_bool(const std::string& key, bool fallback) const {
  if (!options.count(key)) return fallback;
  const std::string v = get(key);
  if (v == "true" || v == "1") return true;
  if (v == "false" || v == "0") return false;
  throw Error(ErrorKind::Format, "modality config: key '" + key + "' = '" + v + "' is not true/false");
}

}  // namespace lego
