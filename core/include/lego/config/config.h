// Reading INI files into the shared Config (DESIGN.md, core/config): Boost.Program_options parses the
// file; the Config class itself lives in the SDK so that plugins read their sections with the same rules.
#pragma once

#include <filesystem>

#include "lego/sdk/config.h"

namespace lego::config {

// Parses an INI file; throws NotFound / Format naming the file (and the key outside any section).
Config read_file(const std::filesystem::path& file);

}  // namespace lego::config
