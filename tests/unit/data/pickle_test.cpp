// The plain-data pickle reader: hand-written pickles of protocols 0 and 2, and the ones it must refuse.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <string>

#include "lego/data/pickle.h"
#include "test_files.h"

namespace {

using lego::ErrorKind;
using lego::data::pickle_to_json;
using lego::testing::expect_error;
using nlohmann::json;

std::string bytes(std::initializer_list<int> b) {
  std::string s;
  for (int v : b) s.push_back(static_cast<char>(v));
  return s;
}

TEST(Pickle, ReadsProtocolZeroTextPickleOfDictsListsAndNumbers) {
  // Python 2: pickle.dumps([{'split': 'train', 'ref_id': 3, 'x': 1.5, 'ok': True, 'n': None}], 0)
  const std::string p =
      "(lp0\n(dp1\nS'split'\np2\nS'train'\np3\nsS'ref_id'\np4\nI3\nsS'x'\np5\nF1.5\nsS'ok'\np6\nI01\nsS'n'\np7\nNsa.";
  EXPECT_EQ(json::parse(pickle_to_json(p, "t.p")),
            json::parse(R"([{"split": "train", "ref_id": 3, "x": 1.5, "ok": true, "n": null}])"));
}

TEST(Pickle, ReadsProtocolZeroUnicodeAsRawUnicodeEscape) {
  // Python 3: pickle.dumps(['\u00e9t\u00e9 \u4e2d'], 0): code points below 256 as Latin-1 bytes, others \uXXXX.
  const std::string p = "(lp0\nV\xe9t\xe9 \\u4e2d\np1\na.";
  EXPECT_EQ(json::parse(pickle_to_json(p, "t.p")), json::parse("[\"\u00e9t\u00e9 \u4e2d\"]"));
}

TEST(Pickle, ReadsProtocolTwoWithMemoReferencesAndLatin1ByteStrings) {
  // [{'s': 'caf\xe9'}, {'s': u'\u00e9t\u00e9'}] with the key 's' memoised once and fetched by BINGET, and
  // the second dict being the first one again (a shared reference).
  std::string p = bytes({0x80, 2, ']', 'q', 0, '(', '}', 'q', 1, 'U', 1, 's', 'q', 2, 'U', 4, 'c', 'a', 'f', 0xe9, 's'});
  p += bytes({'}', 'q', 3, 'h', 2, 'X', 5, 0, 0, 0, 0xc3, 0xa9, 't', 0xc3, 0xa9, 's', 'h', 1, 'e', '.'});
  EXPECT_EQ(json::parse(pickle_to_json(p, "t.p")),
            json::parse(R"([{"s": "café"}, {"s": "été"}, {"s": "café"}])"));
}

TEST(Pickle, ReadsIntegersOfEveryWidth) {
  // [255, 65535, -2, 2**40, -(2**40)] as BININT1, BININT2, BININT, LONG1 (6 bytes) and LONG1 negative.
  std::string p = bytes({0x80, 2, ']', '(', 'K', 255, 'M', 0xff, 0xff, 'J', 0xfe, 0xff, 0xff, 0xff});
  p += bytes({0x8a, 6, 0, 0, 0, 0, 0, 1, 0x8a, 6, 0, 0, 0, 0, 0, 0xff, 'e', '.'});
  EXPECT_EQ(json::parse(pickle_to_json(p, "t.p")), json::parse("[255, 65535, -2, 1099511627776, -1099511627776]"));
}

TEST(Pickle, RefusesCodeTruncationLengthsAndSelfReference) {
  // GLOBAL os.system: reading it would mean running code.
  expect_error([] { pickle_to_json("cos\nsystem\n(S'ls'\ntR.", "evil.p"); }, ErrorKind::Format, {"evil.p", "0x63"});
  expect_error([] { pickle_to_json(bytes({0x80, 2, ']', 'q', 0}), "cut.p"); }, ErrorKind::Format, {"cut.p", "STOP"});
  // A 4 GiB string claimed by a 10-byte file is refused before anything is reserved.
  expect_error([] { pickle_to_json(bytes({0x80, 2, 'X', 0xff, 0xff, 0xff, 0xff, 'a', '.'}), "long.p"); }, ErrorKind::Format,
               {"long.p", "4294967295"});
  // A list holding itself.
  expect_error([] { pickle_to_json(bytes({0x80, 2, ']', 'q', 0, 'h', 0, 'a', '.'}), "loop.p"); }, ErrorKind::Format,
               {"loop.p", "deeper"});
  expect_error([] { pickle_to_json(bytes({0x80, 2, 'h', 7, '.'}), "memo.p"); }, ErrorKind::Format, {"memo.p", "memo entry 7"});
}

TEST(Pickle, RefusesAMillionNestedListsWithoutOverflowingTheStack) {
  constexpr size_t kDepth = 1000000;
  const std::string p = std::string("\x80\x02", 2) + std::string(kDepth, ']') + std::string(kDepth - 1, 'a') + ".";
  expect_error([&] { pickle_to_json(p, "deep.p"); }, ErrorKind::Format, {"deep.p", "deeper than 200"});
}

}  // namespace
