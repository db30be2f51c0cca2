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
  expect_error([&] { read_file(dir / "garbage.ini"); }, ErrorKind::Format, {"garbage.ini"});
  Config c;
  expect_error([&] { c.set(std::string_view("novalue")); }, ErrorKind::InvalidArgument, {"novalue"});
  expect_error([&] { c.set(std::string_view("nosection=1")); }, ErrorKind::InvalidArgument, {"nosection"});
}

}  // namespace
}  // namespace lego::config
