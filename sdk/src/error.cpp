#include "lego/sdk/error.h"

namespace lego {

std::string_view error_kind_name(ErrorKind kind) {
  switch (kind) {
    case ErrorKind::InvalidArgument: return "invalid-argument";
    case ErrorKind::NotFound: return "not-found";
    case ErrorKind::Format: return "format";
    case ErrorKind::Unsupported: return "unsupported";
    case ErrorKind::Plugin: return "plugin";
    case ErrorKind::Io: return "io";
  }
  return "unknown";
}

Error::Error(ErrorKind kind, const std::string& message) : std::runtime_error(message), kind_(kind) {}

Error::~Error() = default;

}  // namespace lego
