// A tiny model directory made with init_model from configs/models/tiny.ini, shared by the tests.
#pragma once

#include <filesystem>

#include "lego/config/config.h"
#include "lego/host/plugin_host.h"
#include "lego/model/init_model.h"
#include "build_paths.h"
#include "test_files.h"

namespace lego::testing {

inline config::Config tiny_config() {
  return config::read_file(source_dir() / "configs/models/tiny.ini");
}

// Makes (once per process) and returns a tiny model directory.
inline const std::filesystem::path& tiny_model_dir() {
  static TempDir dir;
  static const bool made = [] {
    // The plugin host finds the image plugin beside the test binary (build/lib/lego/plugins).
    const host::PluginHost host;
    init_model(tiny_config(), dir / "tiny", 11, host);
    return true;
  }();
  (void)made;
  static const std::filesystem::path path = dir / "tiny";
  return path;
}

}  // namespace lego::testing
