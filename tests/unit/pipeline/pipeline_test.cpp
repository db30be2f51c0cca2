// The Pipeline with a modality the released branches do not have (tests/plugins/points.cpp): clouds of
// different sizes batch through the plugin's own collate, 3-D boxes come back through its own mapping,
// media order and routing come from model.ini and file types, and a splice under grad mode reaches the
// adapter.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <chrono>
#include <cmath>
#include <fstream>
#include <future>
#include <string_view>

#include "lego/config/config.h"
#include "lego/llm/llama.h"
#include "lego/model/init_model.h"
#include "lego/model/language_model.h"
#include "lego/sdk/nn/linear.h"
#include "lego/pipeline/pipeline.h"
#include "lego/sdk/error.h"
#include "lego/sdk/io/image_reader.h"
#include "lego/weights/tensor_source.h"
#include "scoped_env.h"
#include "test_files.h"
#include "tiny_model.h"

namespace lego {
namespace {

const std::filesystem::path kTestPlugins = lego::testing::test_plugin_dir();

// A tiny model with the image branch of tiny.ini and a points section.
struct PointsModel {
  testing::TempDir dir;
  std::shared_ptr<host::PluginHost> host = std::make_shared<host::PluginHost>(std::vector<std::filesystem::path>{kTestPlugins});
  std::unique_ptr<Pipeline> pipeline;

  explicit PointsModel(const std::string& media_order = "") {
    // tiny.ini without the branches this test does not need (fewer weights to draw).
    const auto cfg = testing::tiny_config();
    config::Config c(cfg.source());
    for (const auto& s : cfg.sections()) {
      if (s == "video" || s == "sound" || s == "model") continue;
      for (const auto& k : cfg.section_keys(s)) c.set(s + "." + k, cfg.get_string(s + "." + k));
    }
    c.set("tokenizer.added_tokens", cfg.get_string("tokenizer.added_tokens") + " <pt_patch> <pt_start> <pt_end>");
    c.set("points.plugin", "points");
    c.set("points.tokens", "3");
    if (!media_order.empty()) c.set("model.media_order", media_order);
    init_model(c, dir / "m", 5, *host);
    pipeline = Pipeline::load(dir / "m", {}, host);
  }

  std::filesystem::path cloud(const std::string& name, const std::vector<std::array<double, 3>>& points) {
    std::ofstream out(dir / name);
    for (const auto& p : points) out << p[0] << ' ' << p[1] << ' ' << p[2] << '\n';
    return dir / name;
  }
};

TEST(Pipeline, BatchesMediaOfDifferentSizesThroughThePluginsCollate) {
  PointsModel m;
  const auto a = m.cloud("a.xyz", {{0, 0, 0}, {1, 2, 3}, {2, 0, 1}});
  const auto b = m.cloud("b.xyz", {{5, 5, 5}, {6, 4, 5}, {7, 7, 7}, {1, 1, 1}, {0, 2, 9}, {3, 3, 3}, {4, 4, 4}});
  torch::NoGradGuard no_grad;
  const auto both = m.pipeline->encode({{"points", a}, {"", b}});  // the second routed by its extension
  ASSERT_EQ(both.size(), 2u);
  EXPECT_EQ(both[1].modality, "points");
  EXPECT_EQ(both[0].media.tensor.size(0), 3);
  EXPECT_EQ(both[1].media.tensor.size(0), 7);
  EXPECT_EQ(both[0].features.sizes(), (std::vector<int64_t>{3, 64}));
  // Padding changes nothing: each medium encodes as it does alone.
  const auto alone_a = m.pipeline->encode({{"points", a}});
  const auto alone_b = m.pipeline->encode({{"points", b}});
  EXPECT_TRUE(torch::allclose(both[0].features, alone_a[0].features, 1e-6, 1e-6));
  EXPECT_TRUE(torch::allclose(both[1].features, alone_b[0].features, 1e-6, 1e-6));
  EXPECT_FALSE(torch::allclose(both[0].features, both[1].features));
}

TEST(Pipeline, MapsThreeDimensionalBoxesWithThePluginsOwnCode) {
  PointsModel m;
  const auto cloud = m.cloud("room.xyz", {{-1, 0, 2}, {3, 4, 2.5}, {1, 8, 3}});
  torch::NoGradGuard no_grad;
  const auto media = m.pipeline->encode({{"points", cloud}});
  const auto mentions = grounding::parse("the chair [0.25, 0.5, 0.0, 0.75, 1.0, 1.0] and a box [0.1, 0.2, 0.3, 0.4]");
  ASSERT_EQ(mentions.boxes.size(), 2u);
  const auto g = m.pipeline->ground(mentions, media);
  ASSERT_EQ(g.boxes.size(), 2u);
  ASSERT_TRUE(g.boxes[0].mapped.has_value());
  EXPECT_EQ(g.boxes[0].medium, 0);
  EXPECT_EQ(g.boxes[0].mapped->unit, "m");
  // Bounds x [-1, 3], y [0, 8], z [2, 3].
  const std::vector<double> want = {0.0, 4.0, 2.0, 2.0, 8.0, 3.0};
  ASSERT_EQ(g.boxes[0].mapped->absolute.size(), 6u);
  for (size_t i = 0; i < 6; ++i) EXPECT_NEAR(g.boxes[0].mapped->absolute[i], want[i], 1e-9) << i;
  // A 2-D box goes to no medium here: the points modality carries 3-D boxes only.
  EXPECT_EQ(g.boxes[1].medium, -1);
  EXPECT_FALSE(g.boxes[1].mapped.has_value());
}

// A grey 24-bit BMP of w x h pixels.
void write_grey_bmp(const std::filesystem::path& file, int w, int h) {
  const int row = (w * 3 + 3) / 4 * 4;
  std::string b(54 + static_cast<size_t>(row * h), '\0');
  auto put32 = [&](size_t at, uint32_t v) { for (int i = 0; i < 4; ++i) b[at + i] = static_cast<char>((v >> (8 * i)) & 255); };
  b[0] = 'B', b[1] = 'M';
  put32(2, static_cast<uint32_t>(b.size()));
  put32(10, 54);
  put32(14, 40);
  put32(18, static_cast<uint32_t>(w));
  put32(22, static_cast<uint32_t>(h));
  b[26] = 1, b[28] = 24;
  for (int y = 0; y < h; ++y) {
    for (int x = 0; x < w * 3; ++x) b[54 + static_cast<size_t>(y * row + x)] = static_cast<char>(128);
  }
  testing::write_bytes(file, b);
}

TEST(Pipeline, DrawsAnAnswersBoxWhereItsPluginMappedIt) {
  PointsModel m;
  write_grey_bmp(m.dir / "wide.bmp", 40, 20);
  torch::NoGradGuard no_grad;
  const auto media = m.pipeline->encode({{"", m.dir / "wide.bmp"}, {"", m.cloud("c.xyz", {{0, 0, 0}})}});
  const auto g = m.pipeline->ground(grounding::parse("the ball [0.25, 0.25, 0.75, 0.75]"), media);
  ASSERT_EQ(g.boxes.size(), 1u);
  ASSERT_EQ(g.boxes[0].medium, 0);
  // The square was 40 x 40 with 10 rows of padding above: the box covers x 10..30 and every row.
  EXPECT_EQ(g.boxes[0].mapped->absolute, (std::vector<double>{10, 0, 30, 20}));
  EXPECT_EQ(g.boxes[0].mapped->unit, "px");
  ASSERT_TRUE(m.pipeline->render(g, media, m.dir / "answer.png"));
  const auto drawn = io::ImageReader::read(m.dir / "answer.png");
  ASSERT_EQ(drawn.width, 40);
  const auto px = [&](int x, int y) { return drawn.rgb[y][x].to(torch::kInt32); };
  EXPECT_TRUE(torch::equal(px(2, 10), torch::tensor({128, 128, 128}, torch::kInt32)));  // outside the box
  EXPECT_FALSE(torch::equal(px(10, 16), torch::tensor({128, 128, 128}, torch::kInt32)));  // on its left edge
}

TEST(Pipeline, MediaOrderComesFromModelIni) {
  PointsModel released;  // init-model writes the released order, other modalities after it
  EXPECT_EQ(released.pipeline->media_order(), (std::vector<std::string>{"image", "points"}));
  EXPECT_EQ(released.pipeline->place_media("Q?", {{"points", "p.xyz"}, {"image", "i.png"}}), "<image>\n<points>\nQ?");
  PointsModel custom("points image");
  EXPECT_EQ(custom.pipeline->media_order(), (std::vector<std::string>{"points", "image"}));
  EXPECT_EQ(custom.pipeline->place_media("Q?", {{"image", "i.png"}, {"points", "p.xyz"}}), "<points>\n<image>\nQ?");
}

TEST(Pipeline, RoutesFilesByExtensionAndRefusesWhatNoModalityReads) {
  PointsModel m;
  EXPECT_EQ(m.pipeline->route("scan.XYZ"), "points");
  EXPECT_EQ(m.pipeline->route("photo.png"), "image");
  testing::expect_error([&] { m.pipeline->route("notes.txt"); }, ErrorKind::InvalidArgument, {"notes.txt", ".txt"});
  testing::expect_error([&] { m.pipeline->resolve({{"hologram", "x.xyz"}}); }, ErrorKind::InvalidArgument,
                        {"hologram", "points"});
}

TEST(Pipeline, SpliceUnderGradModeReachesTheAdapter) {
  PointsModel m;
  const auto cloud = m.cloud("c.xyz", {{0, 1, 2}, {3, 4, 5}});
  auto& points = m.pipeline->modality("points");
  points.train(true);
  for (auto& [name, p] : points.adapter_parameters()) p.set_requires_grad(true);
  const auto media = m.pipeline->encode({{"points", cloud}});
  const auto spliced = m.pipeline->splice("<points>\nWhere is the chair?", media);
  EXPECT_TRUE(spliced.embeds.requires_grad());
  spliced.embeds.pow(2).sum().backward();
  for (auto& [name, p] : points.adapter_parameters()) {
    ASSERT_TRUE(p.grad().defined()) << name;
    EXPECT_GT(p.grad().abs().sum().item<double>(), 0.0) << name;
  }
  // Out of place: the rows around the features are the token embeddings, the patch rows the features.
  const auto& ids = spliced.ids.front();
  const auto start = std::find(ids.begin(), ids.end(), m.pipeline->tokenizer().token_id("<pt_start>")) - ids.begin();
  EXPECT_TRUE(torch::equal(spliced.embeds[0].narrow(0, start + 1, 3).detach(), media[0].features.detach()));
}

TEST(Pipeline, BatchedSpliceMatchesOnePromptAtATime) {
  PointsModel m;
  torch::NoGradGuard no_grad;
  const auto a = m.pipeline->encode({{"points", m.cloud("a.xyz", {{0, 1, 2}})}});
  const auto b = m.pipeline->encode({{"points", m.cloud("b.xyz", {{5, 1, 2}, {0, 0, 0}})}});
  const auto batch = m.pipeline->splice({"<points> short", "a longer prompt <points> about the cloud"},
                                        {{&a[0]}, {&b[0]}}, Padding::Left);
  const auto one = m.pipeline->splice("<points> short", a);
  const auto two = m.pipeline->splice("a longer prompt <points> about the cloud", b);
  const int64_t t = batch.embeds.size(1);
  EXPECT_EQ(t, two.embeds.size(1));
  EXPECT_TRUE(torch::equal(batch.embeds[1], two.embeds[0]));
  EXPECT_TRUE(torch::equal(batch.embeds[0].narrow(0, t - one.embeds.size(1), one.embeds.size(1)), one.embeds[0]));
  EXPECT_FALSE(batch.valid[0][0].item<bool>());
  testing::expect_error([&] { m.pipeline->splice({"<points> <points>"}, {{&a[0]}}); }, ErrorKind::InvalidArgument,
                        {"<pt_start>"});
}

TEST(Pipeline, MediaOutliveThePipelineAndThePluginThatMadeThem) {
  std::vector<EncodedMedia> kept;
  {
    PointsModel m;
    torch::NoGradGuard no_grad;
    kept = m.pipeline->encode({{"points", m.cloud("c.xyz", {{0, 1, 2}, {3, 4, 5}})}});
  }  // the pipeline and its host are gone; the plugin library stays while its media live
  ASSERT_EQ(kept.size(), 1u);
  EXPECT_EQ(kept[0].features.size(0), 3);
  kept.clear();  // runs the plugin's metadata destructor
  SUCCEED();
}

TEST(Pipeline, AnswersARequestEndToEnd) {
  PointsModel m;
  Request r;
  r.message = "Where is the chair?";
  r.media = {{"", m.cloud("c.xyz", {{0, 1, 2}, {3, 4, 5}})}};
  r.sampling.max_new_tokens = 4;
  const auto a = m.pipeline->answer(r);
  EXPECT_EQ(a.media.size(), 1u);
  EXPECT_EQ(a.media[0].modality, "points");
  EXPECT_LE(a.output.token_ids.size(), 4u);
  const auto& tok = m.pipeline->tokenizer();
  EXPECT_EQ(std::count(a.prompt_ids.begin(), a.prompt_ids.end(), tok.token_id("<pt_patch>")), 3);
}

// answer() decodes with one generator kept from call to call (LEGO_DECODE_FORM=static keeps its cache on the
// CPU as a CUDA graph is kept on a GPU). A call that finds that generator busy decodes with one of its own
// instead of waiting for it.
TEST(Pipeline, AnswersWithOneKeptGeneratorAndDoesNotWaitForABusyOne) {
  PointsModel m;
  testing::ScopedEnv form("LEGO_DECODE_FORM", "static");
  Request r;
  r.message = "Where is the chair?";
  r.media = {{"", m.cloud("c.xyz", {{0, 1, 2}, {3, 4, 5}})}};
  r.sampling.max_new_tokens = 16;
  r.sampling.stop_at_eos = false;
  r.sampling.stop.clear();
  r.raw = true;  // no template stop: every answer has all 16 tokens
  const auto first = m.pipeline->answer(r);
  EXPECT_FALSE(first.timings.kept_decoding);
  ASSERT_EQ(first.output.token_ids.size(), 16u);
  const auto second = m.pipeline->answer(r);
  EXPECT_TRUE(second.timings.kept_decoding);
  EXPECT_EQ(second.output.token_ids, first.output.token_ids);

  // One call stops in its stream callback, holding the kept generator, while another answers.
  std::promise<void> streaming;
  std::promise<void> release;
  std::shared_future<void> released = release.get_future().share();
  bool signalled = false;
  auto busy = std::async(std::launch::async, [&] {
    return m.pipeline->answer(r, {}, [&](int64_t, std::string_view) {
      if (signalled) return;
      signalled = true;
      streaming.set_value();
      released.wait();
    });
  });
  struct Release {  // the busy call must end even when an assertion below returns early
    std::promise<void>& p;
    ~Release() {
      try {
        p.set_value();
      } catch (const std::future_error&) {
      }
    }
  } release_on_exit{release};
  ASSERT_EQ(streaming.get_future().wait_for(std::chrono::seconds(120)), std::future_status::ready)
      << "the first call never streamed";
  const auto meanwhile = m.pipeline->answer(r);
  release.set_value();
  const auto held = busy.get();
  EXPECT_FALSE(meanwhile.timings.kept_decoding);
  EXPECT_EQ(meanwhile.output.token_ids, first.output.token_ids);
  EXPECT_TRUE(held.timings.kept_decoding);
  EXPECT_EQ(held.output.token_ids, first.output.token_ids);
  EXPECT_TRUE(m.pipeline->answer(r).timings.kept_decoding);
}

TEST(Pipeline, PreparesSeveralRequestsTogetherAsEachAloneAndIsolatesAFailure) {
  PointsModel m;
  std::vector<Request> requests(3);
  requests[0].message = "Where is the chair?";
  requests[0].media = {{"", m.cloud("a.xyz", {{0, 1, 2}, {3, 4, 5}})}};
  requests[1].message = "And here?";
  std::ofstream(m.dir / "broken.xyz") << "1 2\n";  // two numbers on a line: the plugin refuses it
  requests[1].media = {{"", m.dir / "broken.xyz"}};
  requests[2].message = "<points> and <points>: which is bigger?";
  requests[2].media = {{"", m.cloud("b.xyz", {{5, 5, 5}, {6, 4, 5}, {7, 7, 7}})}, {"", m.cloud("c.xyz", {{1, 1, 1}})}};
  std::vector<std::exception_ptr> errors;
  torch::NoGradGuard no_grad;
  std::vector<std::vector<EncodedMedia>> loaded(3);
  loaded[0] = m.pipeline->load_media(requests[0]);
  EXPECT_THROW(m.pipeline->load_media(requests[1]), Error);  // the broken cloud fails where it loads
  loaded[2] = m.pipeline->load_media(requests[2]);
  auto all = m.pipeline->prepare_all(requests, loaded, errors);
  ASSERT_EQ(all.size(), 3u);
  ASSERT_EQ(errors.size(), 3u);
  EXPECT_TRUE(errors[1]);  // its media were not loaded
  EXPECT_THROW(std::rethrow_exception(errors[1]), Error);
  for (size_t i : {size_t{0}, size_t{2}}) {
    SCOPED_TRACE(i);
    ASSERT_FALSE(errors[i]);
    const auto alone = m.pipeline->prepare(requests[i]);
    EXPECT_EQ(all[i].answer.prompt_ids, alone.answer.prompt_ids);
    EXPECT_EQ(all[i].answer.message, alone.answer.message);
    EXPECT_EQ(all[i].sampling.stop, alone.sampling.stop);
    ASSERT_EQ(all[i].answer.media.size(), requests[i].media.size());
    EXPECT_TRUE(torch::allclose(all[i].spliced.embeds, alone.spliced.embeds, 1e-6, 1e-6));
  }
  EXPECT_FALSE(torch::allclose(all[2].answer.media[0].features, all[2].answer.media[1].features));
}

}  // namespace

// lego init-model's [init] section: fan_in draws each matrix from N(0, 1/fan_in); sincos_2d makes the
// named position table fixed 2-D sine-cosine positions (class-token row 0); bad keys name themselves.
TEST(InitModel, FanInWeightsAndASineCosinePositionTable) {
  lego::testing::TempDir dir;
  const host::PluginHost host;
  const std::string table = "model.vision_tower.vision_tower.vision_model.embeddings.position_embedding.weight";
  auto cfg = lego::testing::tiny_config();
  cfg.set("init.scheme", "fan_in");
  cfg.set("init.sincos_2d", table);
  cfg.set("init.sincos_2d_scale", "2");
  init_model(cfg, dir / "m", 5, host);
  const auto weights = weights::open_safetensors(dir / "m" / "model.safetensors");
  EXPECT_NEAR(weights->get("lm_head.weight").std().item<double>(), 1.0 / 8, 0.01);  // hidden 64
  const auto pos = weights->get(table);  // [1 + 4 * 4, 32]: a 4 x 4 grid, d / 4 = 8 frequencies
  ASSERT_EQ(pos.sizes(), (std::vector<int64_t>{17, 32}));
  EXPECT_TRUE(torch::equal(pos[0], torch::zeros({32})));
  for (int64_t cell : {0, 6, 15}) {
    const double col = static_cast<double>(cell % 4), row = static_cast<double>(cell / 4);
    for (int64_t k = 0; k < 8; ++k) {
      const double omega = 1.0 / std::pow(100.0, k / 8.0);
      EXPECT_NEAR(pos[1 + cell][k].item<double>(), 2 * std::sin(col * omega), 1e-6);
      EXPECT_NEAR(pos[1 + cell][8 + k].item<double>(), 2 * std::cos(col * omega), 1e-6);
      EXPECT_NEAR(pos[1 + cell][16 + k].item<double>(), 2 * std::sin(row * omega), 1e-6);
      EXPECT_NEAR(pos[1 + cell][24 + k].item<double>(), 2 * std::cos(row * omega), 1e-6);
    }
  }
  auto refused = [&](const std::string& key, const std::string& value) {
    auto c = lego::testing::tiny_config();
    c.set(key, value);
    try {
      init_model(c, dir / "bad", 5, host);
    } catch (const Error& e) {
      EXPECT_FALSE(std::filesystem::exists(dir / "bad"));
      return std::string(e.what());
    }
    return std::string("(no error)");
  };
  EXPECT_NE(refused("init.scheme", "xavier").find("init.scheme is 'xavier' (normal or fan_in)"), std::string::npos);
  EXPECT_NE(refused("init.sincos_2d", "no.such").find("init.sincos_2d names 'no.such', no tensor"), std::string::npos);
  EXPECT_NE(refused("init.sincos_2d", "lm_head.weight").find("2-D sine-cosine table needs shape"), std::string::npos);
}

// init-model draws one tensor at a time (so a 7B model never sits in memory): the LLM's tensors are what
// init_normal / init_fan_in give the whole module with the same seed, and --dtype bf16 writes the bf16
// rounding of exactly the fp32 draws.
TEST(InitModel, StreamedDrawsEqualTheWholeModuleInitAndBf16IsTheirRounding) {
  lego::testing::TempDir dir;
  const host::PluginHost host;
  for (const std::string scheme : {"normal", "fan_in"}) {
    auto cfg = lego::testing::tiny_config();
    cfg.set("init.scheme", scheme);
    init_model(cfg, dir / scheme, 5, host);
    init_model(cfg, dir / (scheme + "-bf16"), 5, host, torch::kBFloat16);
    const auto fp32 = weights::open_safetensors(dir / scheme / "model.safetensors");
    const auto bf16 = weights::open_safetensors(dir / (scheme + "-bf16") / "model.safetensors");
    ASSERT_EQ(fp32->names(), bf16->names());
    for (const auto& name : fp32->names()) {
      EXPECT_EQ(bf16->info(name).dtype, torch::kBFloat16) << name;
      EXPECT_TRUE(torch::equal(bf16->get(name), fp32->get(name).to(torch::kBFloat16))) << name;
    }
    llm::LlamaForCausalLM net(llama_options_from_config(config::read_file(dir / scheme / "model.ini")));
    if (scheme == "normal") nn::init_normal(*net, 0.02, 5);
    else nn::init_fan_in(*net, 1.0, 5);
    for (const auto& p : net->named_parameters()) {
      EXPECT_TRUE(torch::equal(fp32->get(p.key()), p.value())) << scheme << " " << p.key();
    }
  }
  EXPECT_THROW(init_model(lego::testing::tiny_config(), dir / "int", 5, host, torch::kInt32), Error);
  EXPECT_FALSE(std::filesystem::exists(dir / "int"));
}

// [tokenizer] file: an existing sentencepiece model is used as it is (the released model's is LLaMA's); it
// cannot be combined with a corpus to train one.
TEST(InitModel, AnExistingTokenizerIsUsedAsItIs) {
  lego::testing::TempDir dir;
  const host::PluginHost host;
  const auto tiny = lego::testing::tiny_model_dir();
  config::Config c(lego::testing::tiny_config().source());
  const auto cfg = lego::testing::tiny_config();
  for (const auto& s : cfg.sections()) {
    if (s == "video" || s == "sound" || s == "image") continue;
    for (const auto& k : cfg.section_keys(s)) {
      if (s != "tokenizer" || k == "added_tokens") c.set(s + "." + k, cfg.get_string(s + "." + k));
    }
  }
  c.set("tokenizer.file", std::filesystem::absolute(tiny / "tokenizer.model").string());
  init_model(c, dir / "m", 5, host);
  EXPECT_EQ(lego::testing::read_file_bytes(dir / "m" / "tokenizer.model"),
            lego::testing::read_file_bytes(tiny / "tokenizer.model"));
  c.set("tokenizer.corpus", "../corpus/tiny.txt");
  lego::testing::expect_error([&] { init_model(c, dir / "both", 5, host); }, ErrorKind::Format,
                              {"names a file and a corpus"});
  c = config::Config(cfg.source());
  c.set("tokenizer.file", (dir / "none.model").string());
  lego::testing::expect_error([&] { init_model(c, dir / "none", 5, host); }, ErrorKind::NotFound, {"none.model", "not found"});
  EXPECT_FALSE(std::filesystem::exists(dir / "both"));
  EXPECT_FALSE(std::filesystem::exists(dir / "none"));
}

}  // namespace lego
