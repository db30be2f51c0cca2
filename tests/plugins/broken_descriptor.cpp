// Test plugins whose descriptor is wrong in one way each, chosen at compile time:
// LEGO_TEST_WRONG_ABI (ABI version 999), LEGO_TEST_ABI_V1 (a plugin of ABI version 1, with that version's
// descriptor layout), LEGO_TEST_WRONG_SIZES (sizeof(Media) as a plugin with other SDK headers would see
// it) or LEGO_TEST_WRONG_TORCH (libtorch "1.0.0").
#include "lego/sdk/abi.h"

#ifdef LEGO_TEST_ABI_V1
// What an ABI-1 plugin exported: version, SDK, libtorch, C++ ABI, name, factory, destroy.
struct DescriptorV1 {
  uint32_t abi_version;
  const char* sdk_version;
  const char* torch_version;
  int32_t cxx11_abi;
  const char* modality;
  void* create;
  void* destroy;
};
extern "C" __attribute__((visibility("default"))) const DescriptorV1* lego_plugin_descriptor() {
  static const DescriptorV1 d{1u, "0.1.0", TORCH_VERSION, _GLIBCXX_USE_CXX11_ABI, "old", nullptr, nullptr};
  return &d;
}
#else
namespace {
lego::Modality* never(const lego::ModalityConfig*, const char*, char*, size_t) { return nullptr; }
void never_destroy(lego::Modality*) {}
}  // namespace

extern "C" __attribute__((visibility("default"))) const LegoPluginDescriptor* lego_plugin_descriptor() {
#if defined(LEGO_TEST_WRONG_ABI)
  static const LegoPluginDescriptor d{999u, LEGO_PLUGIN_SIZES, LEGO_SDK_VERSION, TORCH_VERSION, _GLIBCXX_USE_CXX11_ABI,
                                      "broken", &never, &never_destroy};
#elif defined(LEGO_TEST_WRONG_SIZES)
  static const LegoPluginDescriptor d{[] {
                                        LegoPluginDescriptor x{LEGO_PLUGIN_ABI_VERSION, LEGO_PLUGIN_SIZES, LEGO_SDK_VERSION,
                                                               TORCH_VERSION, _GLIBCXX_USE_CXX11_ABI, "resized", &never,
                                                               &never_destroy};
                                        x.sizes.media += 8;
                                        return x;
                                      }()};
#else
  static const LegoPluginDescriptor d{LEGO_PLUGIN_ABI_VERSION, LEGO_PLUGIN_SIZES, LEGO_SDK_VERSION, "1.0.0",
                                      _GLIBCXX_USE_CXX11_ABI, "broken", &never, &never_destroy};
#endif
  return &d;
}
#endif
