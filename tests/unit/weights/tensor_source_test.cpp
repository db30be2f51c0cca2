// Directory discovery, sharded indexes, .bin archives and loading into modules with shape checks.
#include <sys/stat.h>

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/nn/modules/container/sequential.h>

#include "lego/sdk/nn/linear.h"
#include "lego/weights/tensor_source.h"
#include "test_files.h"

namespace lego::weights {
namespace {

using lego::testing::expect_error;
using lego::testing::TempDir;
using lego::testing::write_bytes;

struct TwoLayers : torch::nn::Module {
  TwoLayers() {
    a = register_module("a", nn::Linear(nn::LinearOptions(3, 4)));
    b = register_module("b", nn::Linear(nn::LinearOptions(4, 2).bias(false)));
  }
  nn::Linear a{nullptr}, b{nullptr};
};

TEST(LoadModule, FillsEveryParameterAndAdoptsMatchingStorage) {
  TempDir dir;
  auto w = at::randn({4, 3});
  write_safetensors(dir / "m.safetensors", {{"net.a.weight", w}, {"net.a.bias", at::ones({4})},
                                           {"net.b.weight", at::full({2, 4}, 2.0)}, {"other", at::ones({1})}});
  TwoLayers net;
  auto src = open_tensor_source(dir / "m.safetensors");
  auto report = load_module(net, *src, "net.");
  EXPECT_EQ(report.loaded.size(), 3u);
  EXPECT_TRUE(report.unused.empty());
  EXPECT_TRUE(at::equal(net.a->weight, w));
  EXPECT_TRUE(at::equal(net.b->weight, at::full({2, 4}, 2.0)));
}

TEST(LoadModule, ConvertsToTheRequestedDtype) {
  TempDir dir;
  write_safetensors(dir / "m.safetensors", {{"a.weight", at::randn({4, 3})}, {"a.bias", at::ones({4})},
                                           {"b.weight", at::randn({2, 4})}});
  TwoLayers net;
  load_module(net, *open_tensor_source(dir / "m.safetensors"), "", at::kBFloat16);
  EXPECT_EQ(net.a->weight.scalar_type(), at::kBFloat16);
  EXPECT_EQ(net.b->weight.scalar_type(), at::kBFloat16);
}

TEST(LoadModule, MissingTensorNamesFileAndTensor) {
  TempDir dir;
  write_safetensors(dir / "m.safetensors", {{"a.weight", at::randn({4, 3})}, {"a.bias", at::ones({4})}});
  TwoLayers net;
  auto src = open_tensor_source(dir / "m.safetensors");
  expect_error([&] { load_module(net, *src); }, ErrorKind::NotFound, {"m.safetensors", "'b.weight'", "[2, 4]"});
}

TEST(LoadModule, WrongShapeNamesBothShapes) {
  TempDir dir;
  write_safetensors(dir / "m.safetensors", {{"a.weight", at::randn({3, 4})}, {"a.bias", at::ones({4})},
                                           {"b.weight", at::randn({2, 4})}});
  TwoLayers net;
  auto src = open_tensor_source(dir / "m.safetensors");
  expect_error([&] { load_module(net, *src); }, ErrorKind::Format, {"m.safetensors", "'a.weight'", "[3, 4]", "[4, 3]"});
}

TEST(TensorSource, DirectoryWithoutWeightsIsRefused) {
  TempDir dir;
  expect_error([&] { open_tensor_source(dir.path()); }, ErrorKind::NotFound, {dir.path().string(), "no weights"});
  expect_error([&] { open_tensor_source(dir / "missing"); }, ErrorKind::NotFound, {"missing"});
}

TEST(TensorSource, ShardedIndexReadsEveryShard) {
  TempDir dir;
  write_safetensors(dir / "s1.safetensors", {{"x", at::ones({2})}});
  write_safetensors(dir / "s2.safetensors", {{"y", at::zeros({3})}});
  write_bytes(dir / "model.safetensors.index.json",
              R"({"metadata":{},"weight_map":{"x":"s1.safetensors","y":"s2.safetensors"}})");
  auto src = open_tensor_source(dir.path());
  EXPECT_EQ(src->names(), (std::vector<std::string>{"x", "y"}));
  EXPECT_EQ(src->get("y").numel(), 3);
}

TEST(TensorSource, ShardedIndexPointingAtAMissingTensorIsRefused) {
  TempDir dir;
  write_safetensors(dir / "s1.safetensors", {{"x", at::ones({2})}});
  write_bytes(dir / "model.safetensors.index.json", R"({"weight_map":{"x":"s1.safetensors","z":"s1.safetensors"}})");
  expect_error([&] { open_tensor_source(dir.path()); }, ErrorKind::NotFound, {"index.json", "'z'", "s1.safetensors"});
  write_bytes(dir / "model.safetensors.index.json", R"({"weight_map":{"x":"../s1.safetensors"}})");
  expect_error([&] { open_tensor_source(dir.path()); }, ErrorKind::Format, {"leaves the model directory"});
  write_bytes(dir / "model.safetensors.index.json", R"({"no_map":1})");
  expect_error([&] { open_tensor_source(dir.path()); }, ErrorKind::Format, {"weight_map"});
}

TEST(TensorSource, ShardsAreWeightFilesInsideTheFolderResolvedOnce) {
  TempDir dir, outside;
  write_safetensors(dir / "s1.safetensors", {{"x", at::ones({2})}});
  write_safetensors(outside / "far.safetensors", {{"x", at::ones({2})}});
  std::filesystem::create_directories(dir / "sub.safetensors");
  std::filesystem::create_symlink(outside / "far.safetensors", dir / "link.safetensors");
  ASSERT_EQ(::mkfifo((dir / "pipe.safetensors").c_str(), 0600), 0);
  const std::pair<const char*, const char*> cases[] = {
      {"model.safetensors.index.json", "is an index"},  // the index itself: recursed without bound before
      {"", "leaves the model directory"},
      {".", "is not a weight file"},
      {"sub.safetensors", "is not a weight file"},
      {"link.safetensors", "leaves the model directory"},
      {"pipe.safetensors", "is not a weight file"},
      {"a/../../s1.safetensors", "leaves the model directory"}};
  for (const auto& [shard, why] : cases) {
    write_bytes(dir / "model.safetensors.index.json", std::string(R"({"weight_map":{"x":")") + shard + R"("}})");
    expect_error([&] { open_tensor_source(dir.path()); }, ErrorKind::Format, {"index.json", why});
  }
  expect_error([&] { open_tensor_source(dir / "pipe.safetensors"); }, ErrorKind::InvalidArgument, {"not a regular file"});
}

TEST(TensorSource, BinThatIsNotACheckpointIsRefused) {
  TempDir dir;
  write_bytes(dir / "pytorch_model.bin", "this is not a zip archive");
  expect_error([&] { open_tensor_source(dir.path()); }, ErrorKind::Format, {"pytorch_model.bin"});
}

TEST(TensorSource, UnknownExtensionIsRefused) {
  TempDir dir;
  write_bytes(dir / "w.gguf", "GGUF");
  expect_error([&] { open_tensor_source(dir / "w.gguf"); }, ErrorKind::Unsupported, {"w.gguf"});
}

}  // namespace
}  // namespace lego::weights
