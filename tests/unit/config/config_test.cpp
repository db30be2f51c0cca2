// INI configs and --set overrides; every bad value names the file and the key.
#include <gtest/gtest.h>

#include "lego/config/config.h"
#include "test_files.h"

namespace lego::config {
namespace {

using lego::testing::expect_error;
using lego::testing::TempDir;
using lego::testing::write_bytes;

TEST(Config, ReadsSectionsAndOverrides) {
  TempDir dir;
  write_bytes(dir / "a.ini", "# comment\n[llm]\nhidden_size = 64\nrope_theta = 1e4\n[tokenizer]\nadded = <a> <b>\n");
  auto c = read_file(dir / "a.ini");
  EXPECT_EQ(c.get_int("llm.hidden_size"), 64);
  EXPECT_DOUBLE_EQ(c.get_double("llm.rope_theta"), 1e4);
  EXPECT_EQ(c.get_list("tokenizer.added"), (std::vector<std::string>{"<a>", "<b>"}));
  c.set("llm.hidden_size=128");
  EXPECT_EQ(c.get_int("llm.hidden_size"), 128);
  EXPECT_EQ(c.get_int("llm.missing", 7), 7);
  EXPECT_EQ(c.section_keys("llm"), (std::vector<std::string>{"hidden_size", "rope_theta"}));
}

TEST(Config, RoundTripsThroughIni) {
  TempDir dir;
  Config c;
  c.set("b.y", "2");
  c.set("a.x", "hello world");
  write_bytes(dir / "c.ini", c.to_ini());
  auto back = read_file(dir / "c.ini");
  EXPECT_EQ(back.get_string("a.x"), "hello world");
  EXPECT_EQ(back.get_int("b.y"), 2);
}

TEST(Config, BadValuesNameFileAndKey) {
  TempDir dir;
  write_bytes(dir / "bad.ini", "[llm]\nhidden_size = sixty\nflag = maybe\n");
  auto c = read_file(dir / "bad.ini");
  expect_error([&] { c.get_int("llm.hidden_size"); }, ErrorKind::Format, {"bad.ini", "llm.hidden_size", "sixty"});
  expect_error([&] { c.get_bool("llm.flag"); }, ErrorKind::Format, {"bad.ini", "llm.flag"});
  expect_error([&] { c.get_int("llm.absent"); }, ErrorKind::NotFound, {"bad.ini", "llm.absent"});
}

TEST(Config, MalformedFilesAndOverridesAreRefused) {
  TempDir dir;
  expect_error([&] { read_file(dir / "none.ini"); }, ErrorKind::NotFound, {"none.ini"});
  write_bytes(dir / "nosection.ini", "key = 1\n");
  expect_error([&] { read_file(dir / "nosection.ini"); }, ErrorKind::Format, {"nosection.ini", "key"});
  write_bytes(dir / "garbage.ini", "[llm\nthis is not ini\n");
  expect_error([&] { read_file(dir / "garbage.ini"); }, ErrorKind::Format, {"garbage.ini", "line 1", "[llm"});
  // A refused line holding Boost's own placeholder made its message substitute forever (fuzz finding).
  write_bytes(dir / "placeholder.ini", "[llm]\nx%invalid_line%\n");
  expect_error([&] { read_file(dir / "placeholder.ini"); }, ErrorKind::Format, {"placeholder.ini", "line 2", "x%invalid_line%"});
  Config c;
  expect_error([&] { c.set(std::string_view("novalue")); }, ErrorKind::InvalidArgument, {"novalue"});
  expect_error([&] { c.set(std::string_view("nosection=1")); }, ErrorKind::InvalidArgument, {"nosection"});
}

TEST(Config, DuplicateKeysNonFiniteNumbersAndFoldersAreRefused) {
  TempDir dir;
  write_bytes(dir / "dup.ini", "[llm]\nhidden_size = 64\n[llm]\nhidden_size = 128\n");
  expect_error([&] { read_file(dir / "dup.ini"); }, ErrorKind::Format, {"dup.ini", "llm.hidden_size", "twice"});
  write_bytes(dir / "nan.ini", "[llm]\nrope_theta = nan\neps = inf\nx = 1e999\nsize = 64.5\n");
  auto c = read_file(dir / "nan.ini");
  expect_error([&] { c.get_double("llm.rope_theta"); }, ErrorKind::Format, {"llm.rope_theta", "finite"});
  expect_error([&] { c.get_double("llm.eps"); }, ErrorKind::Format, {"llm.eps"});
  expect_error([&] { c.get_double("llm.x"); }, ErrorKind::Format, {"llm.x"});
  expect_error([&] { c.get_int("llm.size"); }, ErrorKind::Format, {"llm.size", "64.5"});
  std::filesystem::create_directories(dir / "folder.ini");
  expect_error([&] { read_file(dir / "folder.ini"); }, ErrorKind::InvalidArgument, {"folder.ini", "directory"});
}

TEST(Config, KeysNothingReadAreReported) {
  TempDir dir;
  write_bytes(dir / "a.ini", "[llm]\nhidden_size = 64\nrope_scaling_factr = 2\n[video]\nframes = 8\nframs = 4\n");
  const auto c = read_file(dir / "a.ini");
  EXPECT_EQ(c.unread_keys(), (std::vector<std::string>{"llm.hidden_size", "llm.rope_scaling_factr", "video.frames",
                                                        "video.frams"}));
  c.get_int("llm.hidden_size");
  EXPECT_TRUE(c.has("video.frames"));  // asking counts as reading
  EXPECT_FALSE(c.has("video.absent"));
  // A copy (as a plugin's ConfigSection holds) shares the record of what was read.
  const auto shared = std::make_shared<const Config>(c);
  ConfigSection(shared, "video").get_int("frams", 0);
  EXPECT_EQ(c.unread_keys(), (std::vector<std::string>{"llm.rope_scaling_factr"}));
  EXPECT_EQ(c.unread_keys({"video"}), (std::vector<std::string>{}));
}

}  // namespace
}  // namespace lego::config
