#include "lego/fs/atomic_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "lego/sdk/error.h"

namespace lego::fs {
namespace {

[[noreturn]] void fail(const std::filesystem::path& p, const std::string& what) {
  throw Error(ErrorKind::Io, p.string() + ": " + what + ": " + std::strerror(errno));
}

}  // namespace

namespace {

std::filesystem::path beside(const std::filesystem::path& target, const std::string& tag) {
  auto name = target.filename();
  if (name.empty()) name = target.parent_path().filename();  // "dir/"
  const auto dir = target.has_filename() ? target.parent_path() : target.parent_path().parent_path();
  std::string hidden = ".";
  hidden.append(name.string()).append(".").append(tag).append(".").append(std::to_string(::getpid()));
  return dir / hidden;
}

void fsync_dir(const std::filesystem::path& dir) {
  const int dfd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
}

}  // namespace

StagedDirectory::StagedDirectory(const std::filesystem::path& target) : target_(target) {
  std::error_code ec;
  if (std::filesystem::exists(target, ec) && !std::filesystem::is_directory(target, ec)) {
    throw Error(ErrorKind::InvalidArgument, target.string() + ": exists and is not a directory");
  }
  staging_ = beside(target, "staging");
  std::filesystem::remove_all(staging_, ec);  // left by a killed run of this same pid
  if (!staging_.parent_path().empty()) std::filesystem::create_directories(staging_.parent_path(), ec);
  if (!std::filesystem::create_directory(staging_, ec) || ec) {
    throw Error(ErrorKind::Io, staging_.string() + ": cannot create: " + (ec ? ec.message() : "exists"));
  }
}

StagedDirectory::~StagedDirectory() {
  if (committed_) return;
  std::error_code ec;
  std::filesystem::remove_all(staging_, ec);
}

void StagedDirectory::commit() {
  for (const auto& e : std::filesystem::directory_iterator(staging_)) {
    if (e.is_regular_file()) {
      const int fd = ::open(e.path().c_str(), O_RDONLY | O_CLOEXEC);
      if (fd >= 0) {
        ::fsync(fd);
        ::close(fd);
      }
    }
  }
  fsync_dir(staging_);
  std::error_code ec;
  std::filesystem::path old;
  if (std::filesystem::exists(target_, ec)) {
    old = beside(target_, "old");
    std::filesystem::remove_all(old, ec);
    if (::rename(target_.c_str(), old.c_str()) != 0) fail(target_, "cannot move the old directory aside");
  }
  if (::rename(staging_.c_str(), target_.c_str()) != 0) {
    const int saved = errno;
    if (!old.empty()) ::rename(old.c_str(), target_.c_str());  // put the old one back
    errno = saved;
    fail(target_, "cannot rename the new directory into place");
  }
  committed_ = true;
  fsync_dir(target_.parent_path());
  if (!old.empty()) std::filesystem::remove_all(old, ec);
}

}  // namespace lego::fs
