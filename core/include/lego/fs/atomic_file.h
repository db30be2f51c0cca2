// Atomic outputs of core: AtomicFile (from the SDK, lego/sdk/files.h) for single files, StagedDirectory for
// whole model folders. Used for weights, model directories and (later) training checkpoints.
#pragma once

#include <cstddef>
#include <filesystem>
#include <string_view>

#include "lego/sdk/files.h"

namespace lego::fs {

using lego::AtomicFile;
using lego::write_file_atomically;

// A directory built whole or not at all (model folders of init-model and import). Files are written into
// path(), a fresh staging folder beside the target; commit() renames it into place, replacing a directory
// already there only once the new one is complete. Destroyed without commit(), the staging folder is
// removed and the target is left as it was. A target that exists but is no directory is refused.
class StagedDirectory {
 public:
  explicit StagedDirectory(const std::filesystem::path& target);
  ~StagedDirectory();
  StagedDirectory(const StagedDirectory&) = delete;
  StagedDirectory& operator=(const StagedDirectory&) = delete;

  const std::filesystem::path& path() const { return staging_; }
  void commit();

 private:
  std::filesystem::path target_;
  std::filesystem::path staging_;
  bool committed_ = false;
};

}  // namespace lego::fs
