// Test plugins whose descriptor is wrong in one way each, chosen at compile time:
// LEGO_TEST_WRONG_ABI (ABI version 999) or LEGO_TEST_WRONG_TORCH (libtorch "1.0.0").
#include "lego/sdk/abi.h"

namespace {
lego::Modality* never(const lego::ModalityConfig*, char*, size_t) { return nullptr; }
void never_destroy(lego::Modality*) {}
}  // namespace

extern "C" __attribute__((visibility("default"))) const LegoPluginDescriptor* lego_plugin_descriptor() {
#ifdef LEGO_TEST_WRONG_ABI
  static const LegoPluginDescriptor d{999u, LEGO_SDK_VERSION, TORCH_VERSION, _GLIBCXX_USE_CXX11_ABI, "broken", &never, &never_destroy};
#else
  static const LegoPluginDescriptor d{LEGO_PLUGIN_ABI_VERSION, LEGO_SDK_VERSION, "1.0.0", _GLIBCXX_USE_CXX11_ABI, "broken",
                                      &never, &never_destroy};
#endif
  return &d;
}
