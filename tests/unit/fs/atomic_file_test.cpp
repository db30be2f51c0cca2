// Outputs appear whole or not at all; inputs that are not regular files are refused before reading.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <cmath>
#include <fstream>

#include "lego/fs/atomic_file.h"
#include "lego/sdk/files.h"
#include "test_files.h"

namespace lego::fs {
namespace {

using lego::testing::expect_error;
using lego::testing::TempDir;
using lego::testing::write_bytes;

std::string read(const std::filesystem::path& p) {
  std::ifstream in(p);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

TEST(StagedDirectory, AppearsOnlyOnCommit) {
  TempDir dir;
  const auto target = dir / "model";
  {
    StagedDirectory staged(target);
    write_bytes(staged.path() / "a.txt", "new");
    EXPECT_FALSE(std::filesystem::exists(target));
    staged.commit();
  }
  EXPECT_EQ(read(target / "a.txt"), "new");
  EXPECT_EQ(std::distance(std::filesystem::directory_iterator(dir.path()), {}), 1);  // no staging left
}

TEST(StagedDirectory, FailureLeavesNothingAndKeepsTheOldFolder) {
  TempDir dir;
  const auto target = dir / "model";
  {
    StagedDirectory staged(target);
    write_bytes(staged.path() / "half.bin", "xx");
  }  // not committed: as if init-model failed half way
  EXPECT_FALSE(std::filesystem::exists(target));
  EXPECT_EQ(std::distance(std::filesystem::directory_iterator(dir.path()), {}), 0);

  std::filesystem::create_directories(target);
  write_bytes(target / "keep.txt", "old");
  {
    StagedDirectory staged(target);
    write_bytes(staged.path() / "a.txt", "new");
  }
  EXPECT_EQ(read(target / "keep.txt"), "old");
  {
    StagedDirectory staged(target);
    write_bytes(staged.path() / "a.txt", "new");
    staged.commit();
  }
  EXPECT_FALSE(std::filesystem::exists(target / "keep.txt"));  // replaced whole, not merged
  EXPECT_EQ(read(target / "a.txt"), "new");
}

TEST(StagedDirectory, TargetThatIsAFileIsRefused) {
  TempDir dir;
  write_bytes(dir / "file", "x");
  expect_error([&] { StagedDirectory s(dir / "file"); }, ErrorKind::InvalidArgument, {"file", "not a directory"});
}

TEST(Files, OnlyRegularFilesAreRead) {
  TempDir dir;
  write_bytes(dir / "ok", "12345");
  EXPECT_EQ(require_regular_file(dir / "ok", "thing"), 5u);
  ASSERT_EQ(::mkfifo((dir / "fifo").c_str(), 0600), 0);
  expect_error([&] { require_regular_file(dir / "fifo", "tokenizer"); }, ErrorKind::InvalidArgument,
               {"fifo", "tokenizer", "not a regular file"});
  expect_error([&] { require_regular_file(dir.path(), "config"); }, ErrorKind::InvalidArgument, {"directory"});
  expect_error([&] { require_regular_file(dir / "none", "image"); }, ErrorKind::NotFound, {"none", "image not found"});
}

TEST(Files, AllocationsBeyondTheMachineAreRefused) {
  EXPECT_GT(physical_memory_bytes(), 0u);
  require_allocatable(1e6, "small");
  expect_error([] { require_allocatable(1e30, "[llm] hidden_size"); }, ErrorKind::InvalidArgument, {"[llm] hidden_size", "GiB"});
  expect_error([] { require_allocatable(std::nan(""), "x"); }, ErrorKind::InvalidArgument, {"x"});
}

}  // namespace
}  // namespace lego::fs
