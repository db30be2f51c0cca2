// Test plugins that fail inside their own code: LEGO_TEST_THROW_IN_FACTORY (the constructor throws) or
// neither (load() throws a plain std::runtime_error), to check that the host reports both in one line.
#include <stdexcept>

#include "lego/sdk/abi.h"

namespace {

class Throwing : public lego::Modality {
 public:
  explicit Throwing(const lego::ModalityConfig&) {
#ifdef LEGO_TEST_THROW_IN_FACTORY
    throw std::runtime_error("factory exploded");
#endif
  }
  std::string placeholder() const override { return "<throwing>"; }
  std::vector<std::string> frame_tokens() const override { return {"<t_start>", "<t_patch>", "<t_end>"}; }
  int64_t tokens() const override { return 1; }
  std::vector<std::string> file_types() const override { return {"txt"}; }
  std::vector<lego::WeightSpec> weights() const override { return {}; }
  void load_weights(const lego::TensorSource&, at::ScalarType, c10::Device) override {}
  std::vector<std::pair<std::string, at::Tensor>> encoder_parameters() override { return {}; }
  std::vector<std::pair<std::string, at::Tensor>> adapter_parameters() override { return {}; }
  lego::Media load(const std::filesystem::path&, uint64_t) const override { throw std::runtime_error("load exploded"); }
  at::Tensor encode(const lego::MediaBatch& batch) override { return batch.at("input"); }
  at::Tensor encode_features(const lego::MediaBatch& batch) override { return batch.at("input"); }
};

}  // namespace

#ifdef LEGO_TEST_THROW_IN_FACTORY
LEGO_PLUGIN(Throwing, "throwing_factory")
#else
LEGO_PLUGIN(Throwing, "throwing")
#endif
