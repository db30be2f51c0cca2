// Reading the small JSON files that users and checkpoints name (HF config.json, shard indexes, CLIP
// configs), with the same checks as every other file lego reads.
#pragma once

#include <nlohmann/json_fwd.hpp>

#include <filesystem>
#include <string>

namespace lego {

// Parses `file` as JSON. A missing file is NotFound; a folder, FIFO or device (require_regular_file) and a
// file over 256 MiB (these files are a few KB; nlohmann would hold it all in memory) are InvalidArgument;
// text that is not JSON is Format, with nlohmann's reason. `what` says what the file is for and follows
// the path in messages ("JSON file", "shard index", ...).
nlohmann::json read_json_file(const std::filesystem::path& file, const std::string& what);

}  // namespace lego
