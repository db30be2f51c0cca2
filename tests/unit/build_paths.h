// Where the tests find the clone's files (configs/, the shipped templates) and the build's test plugins.
//
// The paths are compiled into one generated source in the build folder (tests/CMakeLists.txt), not passed
// as -D on every test's command line: a command line naming the clone's folder would make ccache miss for
// a clone in another folder, which scripts/build.sh's CCACHE_BASEDIR is there to avoid.
#pragma once

#include <filesystem>

namespace lego::testing {

const char* source_dir_path();
const char* test_plugin_dir_path();

// The source tree the tests were built from.
inline std::filesystem::path source_dir() { return source_dir_path(); }
// The deliberately broken plugins of tests/plugins, as built.
inline std::filesystem::path test_plugin_dir() { return test_plugin_dir_path(); }

}  // namespace lego::testing
