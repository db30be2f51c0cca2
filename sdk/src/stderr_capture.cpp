#include "lego/sdk/stderr_capture.h"

#include <unistd.h>

#include <cstdio>
#include <memory>
#include <mutex>

namespace lego {
namespace {

std::mutex capture_mutex;

// Points fd 2 at `target` while it lives, and back at the saved descriptor when it dies.
class Redirect {
 public:
  explicit Redirect(int target) {
    std::fflush(stderr);
    saved_ = ::dup(STDERR_FILENO);
    if (saved_ >= 0 && target >= 0) ::dup2(target, STDERR_FILENO);
  }
  ~Redirect() {
    if (saved_ < 0) return;
    std::fflush(stderr);
    ::dup2(saved_, STDERR_FILENO);
    ::close(saved_);
  }
  Redirect(const Redirect&) = delete;
  Redirect& operator=(const Redirect&) = delete;

 private:
  int saved_ = -1;
};

}  // namespace

std::string capture_stderr(const std::function<void()>& fn) {
  std::lock_guard<std::mutex> lock(capture_mutex);
  // An anonymous file (already unlinked), closed however this returns. Without one, fn prints as before.
  const std::unique_ptr<std::FILE, int (*)(std::FILE*)> sink(std::tmpfile(), &std::fclose);
  {
    Redirect redirect(sink ? ::fileno(sink.get()) : -1);
    fn();
  }
  std::string text;
  if (!sink) return text;
  std::rewind(sink.get());
  text.resize(64 * 1024);
  text.resize(std::fread(text.data(), 1, text.size(), sink.get()));
  return text;
}

}  // namespace lego
