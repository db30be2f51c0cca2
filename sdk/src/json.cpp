#include "lego/sdk/json.h"

#include <nlohmann/json.hpp>

#include <fstream>

#include "lego/sdk/error.h"
#include "lego/sdk/files.h"

namespace lego {

nlohmann::json read_json_file(const std::filesystem::path& file, const std::string& what) {
  if (require_regular_file(file, what) > (uint64_t{1} << 28)) {
    throw Error(ErrorKind::InvalidArgument, file.string() + ": " + what + " over 256 MiB; such files are a few KB");
  }
  std::ifstream in(file);
  if (!in) throw Error(ErrorKind::Io, file.string() + ": cannot open " + what);
  try {
    return nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    throw Error(ErrorKind::Format, file.string() + ": " + what + " is not valid JSON: " + e.what());
  }
}

}  // namespace lego
