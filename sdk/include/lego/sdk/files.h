// Checks on files named by users and by other files, before anything reads them (DESIGN.md, "Errors").
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <cstddef>

namespace lego {

// Returns the size of `file` after making sure it is a regular file (links followed): a missing file is a
// NotFound error, a folder, FIFO, socket or device an InvalidArgument error (a FIFO would block a reader
// forever, a folder read as empty). `what` says what the file is for ("tokenizer", "media file", ...) and
// starts the message after the path.
uint64_t require_regular_file(const std::filesystem::path& file, const std::string& what);

// AtomicFile: writes a file so that readers see either the old contents or the complete new ones. Data goes
// to a temporary file beside the target; commit() fsyncs it (a full disk fails here, not later), renames it
// over the target and fsyncs the directory. Destroyed without commit(), it removes the temporary file:
// nothing is lost on failure. Every file lego writes goes through it.
class AtomicFile {
 public:
  explicit AtomicFile(const std::filesystem::path& target);
  ~AtomicFile();
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  void write(const void* data, size_t bytes);
  void write(std::string_view text) { write(text.data(), text.size()); }
  void commit();

 private:
  std::filesystem::path target_;
  std::filesystem::path temp_;
  int fd_ = -1;
};

// Writes `text` to `target` atomically.
void write_file_atomically(const std::filesystem::path& target, std::string_view text);

// Bytes of memory this machine has (physical RAM), or 0 when it cannot be told.
uint64_t physical_memory_bytes();

// Refuses, before it is attempted, an allocation of `bytes` that cannot succeed on this machine (more than
// its physical memory): this libtorch aborts the process on a failed allocation, so it cannot be caught
// afterwards. `what` names the setting or input that asked for it.
void require_allocatable(double bytes, const std::string& what);

}  // namespace lego
