// lego::Error messages are one printable line whatever they quote.
#include <gtest/gtest.h>

#include <string>

#include "lego/sdk/error.h"

namespace lego {
namespace {

TEST(OneLine, LineBreaksBecomeSingleSpaces) {
  EXPECT_EQ(one_line("a\nb\r\n\tc\n"), "a b c");
  EXPECT_EQ(one_line("\n\nfirst"), "first");
}

TEST(OneLine, ControlBytesAndInvalidUtf8AreEscaped) {
  EXPECT_EQ(one_line(std::string("x\0y\x1b", 4)), "x\\x00y\\x1b");
  EXPECT_EQ(one_line("bad \xff\xfe end"), "bad \\xff\\xfe end");
  EXPECT_EQ(one_line("cut \xe2\x82"), "cut \\xe2\\x82");          // truncated sequence
  EXPECT_EQ(one_line("overlong \xc0\xaf"), "overlong \\xc0\\xaf");  // overlong '/'
  EXPECT_EQ(one_line("caf\xc3\xa9 \xe2\x82\xac"), "caf\xc3\xa9 \xe2\x82\xac");  // valid UTF-8 is kept
}

TEST(OneLine, LongTextIsCut) {
  const std::string s = one_line(std::string(5000, 'a'), 100);
  EXPECT_EQ(s.size(), 103u);
  EXPECT_EQ(s.substr(100), "...");
}

TEST(OneLine, ErrorMessagesPassThroughIt) {
  const Error e(ErrorKind::Format, "f.json: bad\nsecond line \x01");
  EXPECT_STREQ(e.what(), "f.json: bad second line \\x01");
}

}  // namespace
}  // namespace lego
