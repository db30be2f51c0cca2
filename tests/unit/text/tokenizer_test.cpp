// The tokenizer: added tokens are single ids, text round-trips, bad model files are refused.
#include <gtest/gtest.h>

#include "lego/model/language_model.h"
#include "lego/text/tokenizer.h"
#include "tiny_model.h"

namespace lego::text {
namespace {

using lego::testing::expect_error;
using lego::testing::tiny_model_dir;

Tokenizer tiny_tokenizer() {
  const auto& dir = tiny_model_dir();
  return tokenizer_from_model_dir(dir, config::read_file(dir / "model.ini"));
}

TEST(Tokenizer, AddedTokensFollowTheSentencepieceVocabulary) {
  auto tok = tiny_tokenizer();
  EXPECT_EQ(tok.vocab_size(), 512 + 9);
  EXPECT_EQ(tok.token_id("<im_patch>"), 512);
  EXPECT_EQ(tok.token_id("<so_end>"), 520);
  EXPECT_EQ(tok.piece(514), "<im_end>");
}

TEST(Tokenizer, AddedTokensEncodeAsOneIdWhereverTheyStand) {
  auto tok = tiny_tokenizer();
  const auto ids = tok.encode("a<im_start><im_patch><im_patch><im_end>b", false);
  std::vector<int64_t> specials;
  for (auto id : ids) {
    if (id >= 512) specials.push_back(id);
  }
  EXPECT_EQ(specials, (std::vector<int64_t>{513, 512, 512, 514}));
}

TEST(Tokenizer, BosIsPrependedOnRequest) {
  auto tok = tiny_tokenizer();
  EXPECT_EQ(tok.encode("hello", true).front(), tok.bos_id());
  EXPECT_NE(tok.encode("hello", false).front(), tok.bos_id());
  EXPECT_EQ(tok.encode("", true), std::vector<int64_t>{tok.bos_id()});
}

TEST(Tokenizer, DecodeInvertsEncode) {
  auto tok = tiny_tokenizer();
  for (const std::string s : {"The dog [0.655, 0.402, 0.998, 0.951] sleeps.", "at {0.05, 0.20}", "Über café 東京 😀",
                              "<vi_start><vi_patch><vi_end> what happens?"}) {
    EXPECT_EQ(tok.decode(tok.encode(s, true)), s);
  }
}

TEST(Tokenizer, DecodeRefusesIdsOutsideTheVocabulary) {
  auto tok = tiny_tokenizer();
  expect_error([&] { tok.decode({5, 521}); }, ErrorKind::InvalidArgument, {"521"});
}

TEST(Tokenizer, MissingOrGarbageModelFileIsRefused) {
  lego::testing::TempDir dir;
  expect_error([&] { Tokenizer::from_file(dir / "none.model"); }, ErrorKind::NotFound, {"none.model"});
  lego::testing::write_bytes(dir / "bad.model", "not a protobuf at all");
  expect_error([&] { Tokenizer::from_file(dir / "bad.model"); }, ErrorKind::Format, {"bad.model"});
}

TEST(Tokenizer, DuplicateAddedTokenIsRefused) {
  const auto& dir = tiny_model_dir();
  expect_error([&] { Tokenizer::from_file(dir / "tokenizer.model", {"<x>", "<x>"}); }, ErrorKind::InvalidArgument,
               {"'<x>'"});
}

}  // namespace
}  // namespace lego::text
