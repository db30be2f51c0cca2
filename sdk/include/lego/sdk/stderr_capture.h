// Libraries that print to the process's stderr (libjpeg's and libpng's warnings, sentencepiece's trainer)
// would put their own lines before lego's one-line error. Calls into them go through capture_stderr.
#pragma once

#include <functional>
#include <string>

namespace lego {

// Runs `fn` with file descriptor 2 sent to an anonymous temporary file and returns what was written
// there (the first 64 KiB), with stderr restored even when `fn` throws (the exception then propagates).
// Calls are serialised: fd 2 is the process's, so lines other threads print meanwhile are captured too.
std::string capture_stderr(const std::function<void()>& fn);

}  // namespace lego
