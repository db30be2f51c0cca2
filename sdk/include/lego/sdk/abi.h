// The plugin ABI: how a modality plugin introduces itself to the host (DESIGN.md, "Plugin ABI").
//
// A plugin exports one extern "C" function, `lego_plugin_descriptor`, returning a plain descriptor whose
// first field is the ABI version; then the descriptor's own size and the sizes of the structs that cross
// the boundary, the SDK version, the libtorch version and the C++ ABI flag it was built with, the modality
// name (its only place: Modality::name() returns it) and a factory. The host checks every field before it
// calls anything else and refuses a mismatch with one line. Objects cross as C++ (libtorch tensors and
// modules must), so the checks are what keep it safe. No exception leaves plugin code raw: the factory
// returns its message as text, and every Modality call runs inside GuardedModality, which rethrows as
// lego::Error naming the modality. A plugin writes:
//
//   LEGO_PLUGIN(ImageModality, "image")
//
// where ImageModality derives from lego::Modality and has a constructor taking const ModalityConfig&.
#pragma once

#include <c10/util/Exception.h>
#include <dlfcn.h>
#include <torch/version.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>

#include "lego/sdk/error.h"
#include "lego/sdk/modality.h"

// Bumped whenever the descriptor or the Modality interface changes incompatibly.
#define LEGO_PLUGIN_ABI_VERSION 3u
#define LEGO_SDK_VERSION "0.3.0"
// The symbol the host looks up.
#define LEGO_PLUGIN_ENTRY_NAME "lego_plugin_descriptor"

extern "C" {

// The sizes of what crosses the boundary, as the plugin was compiled: a header that changed without an
// ABI bump shows here.
struct LegoPluginSizes {
  uint32_t descriptor;       // sizeof(LegoPluginDescriptor)
  uint32_t modality;         // sizeof(lego::Modality)
  uint32_t modality_config;  // sizeof(lego::ModalityConfig)
  uint32_t media;            // sizeof(lego::Media)
  uint32_t media_batch;      // sizeof(lego::MediaBatch)
  uint32_t import_plan;      // sizeof(lego::ImportPlan)
};

struct LegoPluginDescriptor {
  uint32_t abi_version;       // LEGO_PLUGIN_ABI_VERSION at the plugin's build: checked first
  LegoPluginSizes sizes;      // checked second
  const char* sdk_version;    // LEGO_SDK_VERSION
  const char* torch_version;  // TORCH_VERSION
  int32_t cxx11_abi;          // _GLIBCXX_USE_CXX11_ABI
  const char* modality;       // the modality's name: "image", "video", ...
  // Makes the modality; on failure returns null and writes a NUL-terminated message into `error`.
  lego::Modality* (*create)(const lego::ModalityConfig* config, const char* name, char* error, size_t error_size);
  // Destroys what create() made, inside the plugin that made it.
  void (*destroy)(lego::Modality* modality);
};

typedef const LegoPluginDescriptor* (*LegoPluginEntry)();

}  // extern "C"

// The sizes this translation unit sees; the host compares a plugin's with its own.
#define LEGO_PLUGIN_SIZES                                                                             \
  LegoPluginSizes {                                                                                   \
    static_cast<uint32_t>(sizeof(LegoPluginDescriptor)), static_cast<uint32_t>(sizeof(lego::Modality)), \
        static_cast<uint32_t>(sizeof(lego::ModalityConfig)), static_cast<uint32_t>(sizeof(lego::Media)),  \
        static_cast<uint32_t>(sizeof(lego::MediaBatch)), static_cast<uint32_t>(sizeof(lego::ImportPlan))  \
  }

namespace lego::detail {

// The file of the shared library holding this code (the plugin), for messages.
inline std::string this_library_file() {
  Dl_info info{};
  if (dladdr(reinterpret_cast<const void*>(&this_library_file), &info) != 0 && info.dli_fname != nullptr) {
    return info.dli_fname;
  }
  return "unknown library";
}

// Runs `fn`, turning anything it throws into lego::Error (kind kept for lego::Error, Plugin otherwise)
// whose message starts with the modality's name.
template <typename Fn>
auto guarded(const std::string& who, Fn&& fn) -> decltype(fn()) {
  try {
    return fn();
  } catch (const Error& e) {
    throw Error(e.kind(), who + ": " + e.what());
  } catch (const c10::Error& e) {
    throw Error(ErrorKind::Plugin, who + ": " + e.what_without_backtrace());
  } catch (const std::exception& e) {
    throw Error(ErrorKind::Plugin, who + ": " + e.what());
  } catch (...) {
    throw Error(ErrorKind::Plugin, who + ": unknown exception");
  }
}

// Wraps a plugin's Modality so that every call is guarded. Compiled into the plugin.
template <typename T>
class GuardedModality final : public Modality {
 public:
  GuardedModality(const ModalityConfig& config, const std::string& name)
      : impl_(std::make_unique<T>(config)), who_("plugin " + name + " (" + this_library_file() + ")") {
    name_ = name;
    impl_->name_ = name;
  }

  std::string placeholder() const override { return guarded(who_, [&] { return impl_->placeholder(); }); }
  std::vector<std::string> frame_tokens() const override { return guarded(who_, [&] { return impl_->frame_tokens(); }); }
  int64_t tokens() const override { return guarded(who_, [&] { return impl_->tokens(); }); }
  std::vector<std::string> file_types() const override { return guarded(who_, [&] { return impl_->file_types(); }); }
  std::vector<WeightSpec> weights() const override { return guarded(who_, [&] { return impl_->weights(); }); }
  void load_weights(const TensorSource& source, at::ScalarType dtype, c10::Device device) override {
    guarded(who_, [&] { impl_->load_weights(source, dtype, device); });
  }
  std::vector<std::pair<std::string, at::Tensor>> encoder_parameters() override {
    return guarded(who_, [&] { return impl_->encoder_parameters(); });
  }
  std::vector<std::pair<std::string, at::Tensor>> adapter_parameters() override {
    return guarded(who_, [&] { return impl_->adapter_parameters(); });
  }
  void train(bool on) override {
    guarded(who_, [&] { impl_->train(on); });
    training_ = impl_->is_training();
  }
  void set_encoder_trainable(bool on) override {
    guarded(who_, [&] { impl_->set_encoder_trainable(on); });
    encoder_trainable_ = impl_->encoder_trainable();
  }
  Media load(const std::filesystem::path& file, uint64_t seed) const override {
    return guarded(who_, [&] { return impl_->load(file, seed); });
  }
  MediaBatch collate(const std::vector<Media>& media) const override {
    return guarded(who_, [&] { return impl_->collate(media); });
  }
  at::Tensor encode(const MediaBatch& batch) override { return guarded(who_, [&] { return impl_->encode(batch); }); }
  at::Tensor encode_features(const MediaBatch& batch) override {
    return guarded(who_, [&] { return impl_->encode_features(batch); });
  }
  GroundingKinds grounding() const override { return guarded(who_, [&] { return impl_->grounding(); }); }
  MappedBox map_box(const Media& media, const std::vector<double>& box) const override {
    return guarded(who_, [&] { return impl_->map_box(media, box); });
  }
  MappedSpan map_span(const Media& media, double t1, double t2) const override {
    return guarded(who_, [&] { return impl_->map_span(media, t1, t2); });
  }
  bool render(const Media& media, const std::vector<GroundedPhrase>& phrases,
              const std::filesystem::path& out) const override {
    return guarded(who_, [&] { return impl_->render(media, phrases, out); });
  }
  std::optional<synth::Rendered> synthesize(const synth::Scene& scene, const std::filesystem::path& stem) const override {
    return guarded(who_, [&] { return impl_->synthesize(scene, stem); });
  }
  std::vector<ImportInput> import_inputs() const override { return guarded(who_, [&] { return impl_->import_inputs(); }); }
  std::optional<ImportPlan> plan_import(const ImportContext& context) const override {
    return guarded(who_, [&] { return impl_->plan_import(context); });
  }

 private:
  std::unique_ptr<T> impl_;
  std::string who_;
};

template <typename T>
Modality* create_guarded(const ModalityConfig* config, const char* name, char* error, size_t error_size) noexcept {
  try {
    return new GuardedModality<T>(*config, name);
  } catch (const c10::Error& e) {
    std::snprintf(error, error_size, "%s", e.what_without_backtrace());
  } catch (const std::exception& e) {
    std::snprintf(error, error_size, "%s", e.what());
  } catch (...) {
    std::snprintf(error, error_size, "unknown exception");
  }
  return nullptr;
}

inline void destroy_modality(Modality* m) noexcept { delete m; }

}  // namespace lego::detail

#define LEGO_PLUGIN(ModalityType, modality_name)                                                          \
  extern "C" __attribute__((visibility("default"))) const LegoPluginDescriptor* lego_plugin_descriptor() { \
    static const LegoPluginDescriptor descriptor{LEGO_PLUGIN_ABI_VERSION,                                 \
                                                 LEGO_PLUGIN_SIZES,                                       \
                                                 LEGO_SDK_VERSION,                                        \
                                                 TORCH_VERSION,                                           \
                                                 _GLIBCXX_USE_CXX11_ABI,                                  \
                                                 modality_name,                                           \
                                                 &::lego::detail::create_guarded<ModalityType>,           \
                                                 &::lego::detail::destroy_modality};                      \
    return &descriptor;                                                                                   \
  }
