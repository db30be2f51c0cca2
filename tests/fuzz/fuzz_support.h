// Shared helpers of the libFuzzer targets (docs/testing.md, "Fuzzing").
//
// A target feeds one input to a public entry point of lego. A lego::Error is the expected answer to a bad
// input; any other exception escapes LLVMFuzzerTestOneInput and aborts, and a crash, a sanitizer report,
// a broken invariant (check()), a timeout or running out of memory is a finding. Inputs the API takes as
// paths are written to a per-process scratch folder, on /dev/shm when it exists, so no disk sync slows
// the campaign.
#pragma once

#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "lego/sdk/error.h"

namespace lego::fuzz {

// The scratch folder of this process (LEGO_FUZZ_TMPDIR, else /dev/shm, else the system temp folder),
// removed at exit.
inline const std::filesystem::path& scratch_dir() {
  struct Scratch {
    std::filesystem::path path;
    Scratch() {
      std::filesystem::path base = std::filesystem::temp_directory_path();
      if (const char* env = std::getenv("LEGO_FUZZ_TMPDIR")) {
        base = env;
      } else if (std::filesystem::is_directory("/dev/shm") && access("/dev/shm", W_OK) == 0) {
        base = "/dev/shm";
      }
      path = base / ("lego-fuzz-" + std::to_string(getpid()));
      std::filesystem::create_directories(path);
    }
    ~Scratch() {
      std::error_code ec;
      std::filesystem::remove_all(path, ec);
    }
  };
  static const Scratch scratch;
  return scratch.path;
}

// Writes `size` bytes to `name` in the scratch folder and returns its path.
inline std::filesystem::path write_input(const std::string& name, const uint8_t* data, size_t size) {
  const auto file = scratch_dir() / name;
  std::ofstream out(file, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
  out.close();
  if (!out) {
    std::fprintf(stderr, "fuzz harness: cannot write %s\n", file.c_str());
    std::abort();
  }
  return file;
}

// An invariant of the API under test; a broken one is reported like a crash.
inline void check(bool ok, const std::string& what) {
  if (!ok) {
    std::fprintf(stderr, "lego fuzz: invariant broken: %s\n", what.c_str());
    std::abort();
  }
}

// Runs `fn`; a lego::Error is a normal outcome, anything else propagates (and aborts the run).
template <typename Fn>
bool refused_or_done(Fn&& fn) {
  try {
    fn();
    return true;
  } catch (const lego::Error&) {
    return false;
  }
}

}  // namespace lego::fuzz
