// The plugin host: broken plugins are refused with one line naming the file, the good ones still load
// and work, and no exception leaves a plugin raw.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "build_paths.h"
#include "lego/host/plugin_host.h"
#include "test_files.h"

namespace lego::host {
namespace {

const std::filesystem::path kTestPlugins = lego::testing::test_plugin_dir();

const PluginRecord& record_of(const PluginHost& host, const std::string& file_stem) {
  for (const auto& r : host.records()) {
    if (r.file.stem() == file_stem) return r;
  }
  throw std::runtime_error("no record for " + file_stem);
}

TEST(PluginHost, RefusesEachBrokenPluginWithItsReasonAndKeepsTheGoodOnes) {
  lego::testing::TempDir junk;
  lego::testing::write_bytes(junk / "libjunk.so", "not an ELF file");
  PluginHost host({kTestPlugins, junk.path()});
  const auto& abi = record_of(host, "liblego_test_wrong_abi");
  EXPECT_FALSE(abi.loaded);
  EXPECT_NE(abi.reason.find("ABI version 999"), std::string::npos) << abi.reason;
  const auto& v1 = record_of(host, "liblego_test_abi_v1");
  EXPECT_FALSE(v1.loaded);
  EXPECT_NE(v1.reason.find("plugin ABI version 1, host expects 3"), std::string::npos) << v1.reason;
  const auto& sizes = record_of(host, "liblego_test_wrong_sizes");
  EXPECT_FALSE(sizes.loaded);
  EXPECT_NE(sizes.reason.find("sizeof(Media)"), std::string::npos) << sizes.reason;
  const auto& torch_version = record_of(host, "liblego_test_wrong_torch");
  EXPECT_FALSE(torch_version.loaded);
  EXPECT_NE(torch_version.reason.find("libtorch 1.0.0"), std::string::npos) << torch_version.reason;
  const auto& no_entry = record_of(host, "liblego_test_no_entry");
  EXPECT_FALSE(no_entry.loaded);
  EXPECT_NE(no_entry.reason.find("lego_plugin_descriptor"), std::string::npos) << no_entry.reason;
  const auto& factory = record_of(host, "liblego_test_throwing_factory");
  EXPECT_FALSE(factory.loaded);
  EXPECT_NE(factory.reason.find("factory exploded"), std::string::npos) << factory.reason;
  const auto& junk_record = record_of(host, "libjunk");
  EXPECT_FALSE(junk_record.loaded);
  EXPECT_NE(junk_record.reason.find("cannot load"), std::string::npos) << junk_record.reason;
  for (const auto& r : host.records()) {
    EXPECT_EQ(r.reason.find('\n'), std::string::npos) << "one line: " << r.reason;
  }
  // The good plugins, from the build's lib/lego/plugins beside the test binary.
  const auto& image = record_of(host, "liblego_plugin_image");
  EXPECT_TRUE(image.loaded) << image.reason;
  EXPECT_EQ(image.placeholder, "<image>");
  EXPECT_EQ(image.tokens, 576);
  EXPECT_TRUE(record_of(host, "liblego_test_throwing").loaded);
}

TEST(PluginHost, AnExceptionInsidePluginCodeArrivesAsLegoErrorNamingThePlugin) {
  PluginHost host({kTestPlugins});
  auto m = host.create("throwing", ModalityConfig{});
  try {
    m->load("whatever.txt", 0);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::Plugin);
    EXPECT_NE(std::string(e.what()).find("load exploded"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("liblego_test_throwing.so"), std::string::npos) << e.what();
  }
}

TEST(PluginHost, UnknownModalityListsWhatWasFound) {
  PluginHost host({kTestPlugins});
  lego::testing::expect_error([&] { host.create("hologram", ModalityConfig{}); }, ErrorKind::NotFound,
                              {"hologram", "liblego_test_wrong_abi", "refused"});
}

TEST(PluginHost, ImagePluginEncodesToTheLlmWidth) {
  PluginHost host;
  auto config = std::make_shared<config::Config>();
  for (const char* kv : {"image.image_size=28", "image.patch_size=14", "image.width=16", "image.layers=2",
                         "image.heads=2", "image.mlp_dim=32"}) {
    config->set(std::string_view(kv));
  }
  auto m = host.create("image", ModalityConfig{config::ConfigSection(config, "image"), 48, {}});
  EXPECT_EQ(m->name(), "image");
  EXPECT_EQ(m->tokens(), 4);
  torch::NoGradGuard ng;
  for (auto& [name, t] : m->encoder_parameters()) t.normal_(0, 0.02);
  for (auto& [name, t] : m->adapter_parameters()) t.normal_(0, 0.02);
  MediaBatch batch{2, {{"input", torch::randn({2, 3, 28, 28})}}};
  const auto out = m->encode(batch);
  EXPECT_EQ(out.sizes(), (std::vector<int64_t>{2, 4, 48}));
}

TEST(PluginHost, PluginSectionErrorsNameFileSectionAndKey) {
  PluginHost host;
  auto config = std::make_shared<config::Config>("/models/x/model.ini");
  config->set("image.layers", "many");
  lego::testing::expect_error(
      [&] { host.create("image", ModalityConfig{config::ConfigSection(config, "image"), 48, {}}); }, ErrorKind::Plugin,
      {"/models/x/model.ini", "image.layers", "many"});
}

TEST(PluginHost, ModalityKeepsItsLibraryAfterTheHostIsGone) {
  std::shared_ptr<Modality> m;
  {
    PluginHost host({kTestPlugins});
    m = host.create("throwing", ModalityConfig{});
  }
  EXPECT_EQ(m->name(), "throwing");
  EXPECT_THROW(m->load("x", 0), Error);
}

}  // namespace
}  // namespace lego::host
