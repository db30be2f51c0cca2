// The safetensors reader refuses every malformed file with an error naming the file and the tensor.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>
#include <utility>

#include "lego/weights/tensor_source.h"
#include "proc_maps.h"
#include "test_files.h"

namespace lego::weights {
namespace {

using lego::testing::expect_error;
using lego::testing::mapping_field;
using lego::testing::read_file_bytes;
using lego::testing::TempDir;
using lego::testing::write_bytes;

// 8-byte length + header text + data bytes.
std::string safetensors_bytes(const std::string& header, const std::string& data, int64_t claimed_len = -1) {
  const uint64_t len = claimed_len < 0 ? header.size() : static_cast<uint64_t>(claimed_len);
  std::string out(8, '\0');
  std::memcpy(out.data(), &len, 8);
  return out + header + data;
}

std::string floats(int n) { return std::string(static_cast<size_t>(n) * 4, '\x01'); }

TEST(Safetensors, RoundTripsEveryWrittenTensor) {
  TempDir dir;
  auto a = at::arange(12, at::kFloat).view({3, 4});
  auto b = at::tensor({1, 2, 3}, at::kLong);
  auto c = at::randn({2, 5}).to(at::kBFloat16);
  write_safetensors(dir / "m.safetensors", {{"a", a}, {"b", b}, {"c", c}}, {{"format", "pt"}});
  auto src = open_safetensors(dir / "m.safetensors");
  EXPECT_EQ(src->names(), (std::vector<std::string>{"a", "b", "c"}));
  EXPECT_TRUE(at::equal(src->get("a"), a));
  EXPECT_TRUE(at::equal(src->get("b"), b));
  EXPECT_TRUE(at::equal(src->get("c"), c));
  EXPECT_EQ(src->info("c").dtype, at::kBFloat16);
}

// A streamed file is the file write_safetensors writes; each tensor is asked for once, in order, only
// after the one before it was written.
TEST(Safetensors, StreamedWritingMatchesWholeWritingAndAsksInOrder) {
  TempDir dir;
  std::vector<std::pair<std::string, at::Tensor>> tensors = {
      {"x", at::arange(6, at::kFloat).view({2, 3})}, {"y", at::randn({4}).to(at::kBFloat16)}, {"z", at::ones({1, 2, 2}, at::kByte)}};
  write_safetensors(dir / "whole.safetensors", tensors, {{"format", "pt"}});
  std::vector<TensorSpec> specs;
  for (const auto& [n, t] : tensors) specs.push_back({n, t.scalar_type(), t.sizes().vec()});
  std::vector<size_t> asked;
  write_safetensors_streamed(dir / "streamed.safetensors", specs,
                             [&](size_t i) {
                               asked.push_back(i);
                               return tensors[i].second;
                             },
                             {{"format", "pt"}});
  EXPECT_EQ(asked, (std::vector<size_t>{0, 1, 2}));
  EXPECT_EQ(read_file_bytes(dir / "whole.safetensors"), read_file_bytes(dir / "streamed.safetensors"));
}

// A tensor that disagrees with its header, or a producer that throws, leaves the target as it was.
TEST(Safetensors, StreamedWritingRefusesATensorUnlikeItsSpecAndKeepsTheOldFile) {
  TempDir dir;
  const auto file = dir / "m.safetensors";
  write_safetensors(file, {{"old", at::zeros({2})}});
  const auto before = read_file_bytes(file);
  const std::vector<TensorSpec> specs = {{"a", at::kFloat, {2, 3}}, {"b", at::kBFloat16, {4}}};
  const auto made = [](at::Tensor b) {
    return [b](size_t i) { return i == 0 ? at::zeros({2, 3}) : b; };
  };
  expect_error([&] { write_safetensors_streamed(file, specs, made(at::zeros({4}))); }, ErrorKind::InvalidArgument,
               {"m.safetensors", "'b'", "header promised BF16 [4]"});
  expect_error([&] { write_safetensors_streamed(file, specs, made(at::zeros({5}, at::kBFloat16))); },
               ErrorKind::InvalidArgument, {"'b'", "[5]"});
  expect_error(
      [&] {
        write_safetensors_streamed(file, specs, [](size_t i) -> at::Tensor {
          if (i == 1) throw Error(ErrorKind::Format, "producer failed");
          return at::zeros({2, 3});
        });
      },
      ErrorKind::Format, {"producer failed"});
  expect_error([&] { write_safetensors_streamed(file, {{"a", at::kFloat, {-1}}}, made(at::zeros({1}))); },
               ErrorKind::InvalidArgument, {"'a'", "negative"});
  EXPECT_EQ(read_file_bytes(file), before);
  EXPECT_EQ(std::distance(std::filesystem::directory_iterator(dir.path()), {}), 1);  // no temporary left behind
}

TEST(Safetensors, TensorsStayValidAfterTheSourceIsGone) {
  TempDir dir;
  write_safetensors(dir / "m.safetensors", {{"w", at::ones({4})}});
  at::Tensor w;
  {
    auto src = open_safetensors(dir / "m.safetensors");
    w = src->get("w");
  }
  EXPECT_EQ(w.sum().item<float>(), 4.0f);
}

// populate maps a mapped tensor's pages from the page cache, for reading: all of them resident, none copied
// into the private mapping's own memory.
TEST(Safetensors, PopulateMapsTheFilesPagesWithoutCopyingThem) {
  TempDir dir;
  const auto big = at::arange(1 << 20, at::kFloat);  // 4 MiB
  write_safetensors(dir / "m.safetensors", {{"w", big}});
  auto src = open_safetensors(dir / "m.safetensors");
  const auto w = src->get("w");
  const long before = mapping_field(w.data_ptr(), "Rss");
  ASSERT_GE(before, 0) << "no mapping holds the tensor";
  EXPECT_LT(before, 1024) << "pages mapped before populate";
  if (!populate(w)) GTEST_SKIP() << "this kernel has no MADV_POPULATE_READ";
  EXPECT_GE(mapping_field(w.data_ptr(), "Rss"), 4096);
  EXPECT_EQ(mapping_field(w.data_ptr(), "Anonymous"), 0) << "populate copied pages of the private mapping";
  EXPECT_TRUE(at::equal(w, big));
  EXPECT_FALSE(populate(at::Tensor()));
  EXPECT_FALSE(populate(at::empty({0})));
}

TEST(Safetensors, RejectsMissingFile) {
  TempDir dir;
  expect_error([&] { open_safetensors(dir / "none.safetensors"); }, ErrorKind::NotFound, {"none.safetensors"});
}

TEST(Safetensors, RejectsTruncatedSafetensorsHeader) {
  TempDir dir;
  write_bytes(dir / "t.safetensors", std::string("\x10\x00\x00", 3));
  expect_error([&] { open_safetensors(dir / "t.safetensors"); }, ErrorKind::Format, {"t.safetensors", "truncated"});
}

TEST(Safetensors, RejectsHeaderLengthPastTheEnd) {
  TempDir dir;
  write_bytes(dir / "h.safetensors", safetensors_bytes("{}", "", 1'000'000));
  expect_error([&] { open_safetensors(dir / "h.safetensors"); }, ErrorKind::Format, {"h.safetensors", "past the end"});
}

TEST(Safetensors, RejectsHeaderThatIsNotJson) {
  TempDir dir;
  write_bytes(dir / "j.safetensors", safetensors_bytes("{not json", ""));
  expect_error([&] { open_safetensors(dir / "j.safetensors"); }, ErrorKind::Format, {"j.safetensors", "JSON"});
  write_bytes(dir / "k.safetensors", safetensors_bytes("[1, 2]", ""));
  expect_error([&] { open_safetensors(dir / "k.safetensors"); }, ErrorKind::Format, {"k.safetensors", "object"});
}

TEST(Safetensors, RejectsUnknownDtype) {
  TempDir dir;
  write_bytes(dir / "d.safetensors",
              safetensors_bytes(R"({"w":{"dtype":"F33","shape":[1],"data_offsets":[0,4]}})", floats(1)));
  expect_error([&] { open_safetensors(dir / "d.safetensors"); }, ErrorKind::Unsupported, {"d.safetensors", "'w'", "F33"});
}

TEST(Safetensors, RejectsOffsetsPastTheData) {
  TempDir dir;
  write_bytes(dir / "o.safetensors",
              safetensors_bytes(R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", floats(2)));
  expect_error([&] { open_safetensors(dir / "o.safetensors"); }, ErrorKind::Format, {"o.safetensors", "'w'", "past the data"});
}

TEST(Safetensors, RejectsOverlappingTensors) {
  TempDir dir;
  write_bytes(dir / "v.safetensors",
              safetensors_bytes(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                                R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                                floats(3)));
  expect_error([&] { open_safetensors(dir / "v.safetensors"); }, ErrorKind::Format, {"v.safetensors", "'a'", "'b'", "overlap"});
}

TEST(Safetensors, RejectsSizeThatDisagreesWithShape) {
  TempDir dir;
  write_bytes(dir / "s.safetensors",
              safetensors_bytes(R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", floats(2)));
  expect_error([&] { open_safetensors(dir / "s.safetensors"); }, ErrorKind::Format, {"s.safetensors", "'w'", "bytes"});
}

TEST(Safetensors, RejectsBeginAfterEnd) {
  TempDir dir;
  write_bytes(dir / "r.safetensors",
              safetensors_bytes(R"({"w":{"dtype":"F32","shape":[0],"data_offsets":[8,4]}})", floats(2)));
  expect_error([&] { open_safetensors(dir / "r.safetensors"); }, ErrorKind::Format, {"r.safetensors", "'w'"});
}

TEST(Safetensors, RejectsDuplicateNames) {
  TempDir dir;
  write_bytes(dir / "dup.safetensors",
              safetensors_bytes(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                                R"("w":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                                floats(2)));
  expect_error([&] { open_safetensors(dir / "dup.safetensors"); }, ErrorKind::Format, {"dup.safetensors", "'w'", "twice"});
}

TEST(Safetensors, RejectsNegativeOrFractionalShape) {
  TempDir dir;
  write_bytes(dir / "n.safetensors",
              safetensors_bytes(R"({"w":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", floats(1)));
  expect_error([&] { open_safetensors(dir / "n.safetensors"); }, ErrorKind::Format, {"n.safetensors", "'w'", "shape"});
}

TEST(Safetensors, MissingTensorIsNamed) {
  TempDir dir;
  write_safetensors(dir / "m.safetensors", {{"a", at::ones({1})}});
  auto src = open_safetensors(dir / "m.safetensors");
  expect_error([&] { src->get("b"); }, ErrorKind::NotFound, {"m.safetensors", "'b'"});
}

TEST(Safetensors, SurvivesEveryTruncationOfAValidFile) {
  TempDir dir;
  write_safetensors(dir / "full.safetensors", {{"a", at::ones({3, 3})}, {"b", at::zeros({5}, at::kLong)}});
  std::ifstream in(dir / "full.safetensors", std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  for (size_t cut = 0; cut < bytes.size(); ++cut) {
    write_bytes(dir / "cut.safetensors", bytes.substr(0, cut));
    EXPECT_THROW(open_safetensors(dir / "cut.safetensors"), Error) << "cut at " << cut;
  }
}

TEST(Safetensors, WriterLeavesNoPartialFileOnError) {
  TempDir dir;
  EXPECT_THROW(write_safetensors(dir / "x.safetensors", {{"a", at::ones({1})}, {"a", at::ones({1})}}), Error);
  EXPECT_FALSE(std::filesystem::exists(dir / "x.safetensors"));
  EXPECT_EQ(std::distance(std::filesystem::directory_iterator(dir.path()), std::filesystem::directory_iterator()), 0);
}

}  // namespace
}  // namespace lego::weights
