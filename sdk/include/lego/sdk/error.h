// lego::Error — the one exception type of lego (DESIGN.md, "Errors").
//
// Every failure a user can cause (bad files, configs, arguments, plugins) is reported as a lego::Error
// whose kind says what went wrong and whose message names the file, key, tensor or argument. It lives in
// the SDK because it is the lowest layer: core, plugins and apps all throw and catch it.
#pragma once

#include <stdexcept>
#include <string>
#include <string_view>

namespace lego {

enum class ErrorKind {
  InvalidArgument,  // a caller passed a value that cannot be used (bad flag, bad shape request)
  NotFound,         // a file, tensor, key or plugin that should exist does not
  Format,           // a file exists but its contents are malformed or inconsistent
  Unsupported,      // well-formed input that lego does not handle (unknown dtype, feature)
  Plugin,           // a plugin was refused or failed inside its own code
  Io,               // the operating system refused a read, write, map or rename
};

// Short lower-case name of a kind, as printed by the CLI ("format", "not-found", ...).
std::string_view error_kind_name(ErrorKind kind);

// `text` as one printable line: line breaks and tabs become single spaces, other control bytes and bytes
// that are not valid UTF-8 become \xNN, and text past `max_bytes` is cut with "...". Every Error message
// passes through it, so a message quoting a hostile file (raw binary, a library's multi-line report)
// still prints as the one line the CLI promises.
std::string one_line(std::string_view text, size_t max_bytes = 2000);

class Error : public std::runtime_error {
 public:
  // The message is stored as one_line(message).
  Error(ErrorKind kind, const std::string& message);
  // Out of line on purpose: it anchors the vtable and type info in liblego_sdk, so an Error thrown from a
  // plugin stays valid after that plugin is unloaded.
  ~Error() override;

  ErrorKind kind() const noexcept { return kind_; }

 private:
  ErrorKind kind_;
};

}  // namespace lego
