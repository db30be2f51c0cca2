// AtomicFile: writes a file so that readers see either the old contents or the complete new ones.
//
// Data goes to a temporary file beside the target; commit() fsyncs it, renames it over the target and
// fsyncs the directory. Destroyed without commit(), it removes the temporary file: nothing is lost on
// failure. Used for weights, model directories and (later) training checkpoints.
#pragma once

#include <cstddef>
#include <filesystem>
#include <string_view>

namespace lego::fs {

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

}  // namespace lego::fs
