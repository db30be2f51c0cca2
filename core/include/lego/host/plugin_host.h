// PluginHost: finds modality plugins, checks their descriptors and makes modalities (DESIGN.md, core/host).
//
// Search order: the directories given (--plugin-dir), then LEGO_PLUGIN_PATH (':'-separated), then the
// install's lib/lego/plugins beside the running executable, then lib/lego/plugins beside liblego_core
// itself (which is how the Python module, run by python, finds the plugins of its install or build tree). Every shared library found is opened with
// Boost.DLL and its descriptor checked field by field (ABI version first, before anything else is read);
// a refused plugin is recorded with one line of reason and the others still load. A modality keeps its
// library loaded for as long as it lives.
#pragma once

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "lego/sdk/modality.h"

namespace lego::host {

struct PluginRecord {
  std::filesystem::path file;
  std::string modality;       // from the descriptor ("" if refused before it was read)
  uint32_t abi_version = 0;
  std::string sdk_version;
  std::string torch_version;
  std::string placeholder;    // from a probe with default options
  int64_t tokens = 0;
  std::vector<std::string> file_types;
  GroundingKinds grounding;
  std::vector<ImportInput> import_inputs;
  bool loaded = false;
  std::string reason;         // why it was refused
};

class PluginHost {
 public:
  // Directories searched, in order (missing LEGO_PLUGIN_PATH entries and the default folder are skipped).
  static std::vector<std::filesystem::path> search_path(const std::vector<std::filesystem::path>& plugin_dirs);

  // `plugin_dirs` (e.g. from --plugin-dir) must exist: a missing one is a NotFound error, not skipped.
  // A library whose ELF headers or segments lie past its end is refused before it is mapped.
  explicit PluginHost(const std::vector<std::filesystem::path>& plugin_dirs = {});
  ~PluginHost();
  PluginHost(const PluginHost&) = delete;
  PluginHost& operator=(const PluginHost&) = delete;

  // Every library found, loaded or refused.
  const std::vector<PluginRecord>& records() const;
  // Names of the modalities the loaded plugins provide, in search order, each once.
  std::vector<std::string> modalities() const;
  // The record of the loaded plugin that provides `modality`, or null.
  const PluginRecord* provider(const std::string& modality) const;
  // Makes the named modality from the first loaded plugin that provides it; throws NotFound listing what
  // was found (and why candidates were refused).
  std::shared_ptr<Modality> create(const std::string& modality, const ModalityConfig& config) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace lego::host
