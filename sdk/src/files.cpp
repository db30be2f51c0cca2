#include "lego/sdk/files.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <cmath>
#include <cstdio>

#include "lego/sdk/error.h"

namespace lego {
namespace {

[[noreturn]] void fail(const std::filesystem::path& p, const std::string& what) {
  throw Error(ErrorKind::Io, p.string() + ": " + what + ": " + std::strerror(errno));
}

}  // namespace

AtomicFile::AtomicFile(const std::filesystem::path& target) : target_(target) {
  temp_ = target;
  temp_ += ".tmp." + std::to_string(::getpid());
  fd_ = ::open(temp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd_ < 0) fail(temp_, "cannot create");
}

AtomicFile::~AtomicFile() {
  if (fd_ >= 0) {
    ::close(fd_);
    ::unlink(temp_.c_str());
  }
}

void AtomicFile::write(const void* data, size_t bytes) {
  const auto* p = static_cast<const char*>(data);
  while (bytes > 0) {
    const ssize_t n = ::write(fd_, p, bytes);
    if (n < 0) {
      if (errno == EINTR) continue;
      fail(temp_, "cannot write");
    }
    p += n;
    bytes -= static_cast<size_t>(n);
  }
}

void AtomicFile::commit() {
  if (::fsync(fd_) != 0) fail(temp_, "cannot fsync");
  if (::close(fd_) != 0) {
    fd_ = -1;
    ::unlink(temp_.c_str());
    fail(temp_, "cannot close");
  }
  fd_ = -1;
  if (::rename(temp_.c_str(), target_.c_str()) != 0) {
    ::unlink(temp_.c_str());
    fail(target_, "cannot rename into place");
  }
  auto dir = target_.parent_path();
  const int dfd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
}

void write_file_atomically(const std::filesystem::path& target, std::string_view text) {
  AtomicFile f(target);
  f.write(text);
  f.commit();
}


uint64_t require_regular_file(const std::filesystem::path& file, const std::string& what) {
  std::error_code ec;
  const auto status = std::filesystem::status(file, ec);
  if (ec || !std::filesystem::exists(status)) {
    throw Error(ErrorKind::NotFound, file.string() + ": " + what + " not found");
  }
  if (!std::filesystem::is_regular_file(status)) {
    const char* kind = std::filesystem::is_directory(status) ? "a directory" : "not a regular file";
    throw Error(ErrorKind::InvalidArgument, file.string() + ": " + what + " is " + kind);
  }
  const auto size = std::filesystem::file_size(file, ec);
  if (ec) throw Error(ErrorKind::Io, file.string() + ": " + what + ": " + ec.message());
  return size;
}

uint64_t physical_memory_bytes() {
  const long pages = ::sysconf(_SC_PHYS_PAGES);
  const long page = ::sysconf(_SC_PAGESIZE);
  if (pages <= 0 || page <= 0) return 0;
  return static_cast<uint64_t>(pages) * static_cast<uint64_t>(page);
}

void require_allocatable(double bytes, const std::string& what) {
  const uint64_t have = physical_memory_bytes();
  if (std::isfinite(bytes) && bytes >= 0 && (have == 0 || bytes <= static_cast<double>(have))) return;
  char need[32];
  std::snprintf(need, sizeof need, "%.3g", bytes / (1u << 30));
  throw Error(ErrorKind::InvalidArgument, what + " needs " + need + " GiB, more than this machine's " +
                                              std::to_string(have >> 30) + " GiB of memory");
}

}  // namespace lego
