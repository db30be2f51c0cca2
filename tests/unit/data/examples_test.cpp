// core/data: reading rows of the released format, the training template and label masking, truncation,
// length-grouped batches, and the task templates.
#include <gtest/gtest.h>

#include <fstream>
#include <set>

#include "lego/data/examples.h"
#include "lego/data/loader.h"
#include "lego/data/rows.h"
#include "lego/data/templates.h"
#include "lego/model/init_model.h"
#include "lego/pipeline/pipeline.h"
#include "lego/sdk/error.h"
#include "tiny_model.h"

namespace lego::data {
namespace {

using lego::testing::TempDir;

std::filesystem::path write(const std::filesystem::path& file, const std::string& text) {
  std::ofstream(file) << text;
  return file;
}

Pipeline& tiny_pipeline() {
  static auto host = std::make_shared<host::PluginHost>();
  static auto p = Pipeline::load(lego::testing::tiny_model_dir(), {}, host);
  return *p;
}

std::map<std::string, std::filesystem::path> roots(const std::filesystem::path& dir) {
  return {{"image", dir}, {"video", dir}, {"sound", dir}};
}

std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(Rows, ReadsArraysAndJsonLinesWithMediaRelativeToTheirRoot) {
  TempDir dir;
  write(dir / "a.json", R"([{"id": "x", "image": "p/1.png", "conversations": [
      {"from": "human", "value": "<image>\nWhere?"}, {"from": "gpt", "value": "[0.1, 0.2, 0.3, 0.4]"}]}])");
  write(dir / "b.jsonl", R"({"sound": ["s.wav"], "conversations": [{"from": "user", "value": "hi"}, {"from": "assistant", "value": "yo"}]}

{"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]})");
  const auto a = read_rows(dir / "a.json", roots(dir.path()));
  ASSERT_EQ(a.size(), 1u);
  EXPECT_EQ(a[0].id, "x");
  ASSERT_EQ(a[0].media.size(), 1u);
  EXPECT_EQ(a[0].media[0].modality, "image");
  EXPECT_EQ(a[0].media[0].file, dir.path() / "p/1.png");
  const auto b = read_rows(dir / "b.jsonl", roots(dir.path()));
  ASSERT_EQ(b.size(), 2u);
  EXPECT_EQ(b[0].media[0].modality, "sound");
  EXPECT_FALSE(b[0].messages[1].human);
  EXPECT_EQ(b[1].index, 1);
}

TEST(Rows, BadRowsNameTheFileAndRowOrAreSkippedAndCounted) {
  TempDir dir;
  const auto f = write(dir / "bad.json", R"([
    {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]},
    {"conversations": [{"from": "human", "value": "only a question"}]},
    {"image": 3, "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]},
    {"conversations": [{"from": "robot", "value": "q"}]},
    "not an object",
    {"conversations": "no list"}])");
  EXPECT_NE(error_of([&] { read_rows(f, roots(dir.path())); }).find("bad.json row 2: has no assistant turn"), std::string::npos);
  std::vector<std::string> bad;
  const auto rows = read_rows(f, roots(dir.path()), [&](const Row& r, const std::string& why) { bad.push_back(r.where() + ": " + why); });
  EXPECT_EQ(rows.size(), 1u);
  ASSERT_EQ(bad.size(), 5u);
  EXPECT_NE(bad[1].find("row 3: 'image' is a number"), std::string::npos) << bad[1];
  EXPECT_NE(bad[2].find("row 4: turn 1 is from 'robot'"), std::string::npos) << bad[2];
  EXPECT_NE(bad[3].find("row 5: is a string"), std::string::npos) << bad[3];
  EXPECT_NE(bad[4].find("row 6: 'conversations' is a string"), std::string::npos) << bad[4];
  EXPECT_NE(error_of([&] { read_rows(write(dir / "x.json", "[{"), roots(dir.path())); }).find("x.json: not a JSON array"),
            std::string::npos);
  EXPECT_NE(error_of([&] { read_rows(dir / "missing.json", roots(dir.path())); }).find("missing.json"), std::string::npos);
}

Row row_of(const std::vector<std::pair<bool, std::string>>& turns, std::vector<RowMedium> media = {}) {
  Row r;
  r.source = "t.json";
  r.media = std::move(media);
  for (const auto& [human, v] : turns) r.messages.push_back({human, v});
  return r;
}

TEST(Examples, ReleasedMaskingKeepsAssistantTurnsTheTrailingHeaderAndTwoTokensOfEachHumanTurn) {
  auto& p = tiny_pipeline();
  const auto& tok = p.tokenizer();
  ExampleBuilder b(p, {Masking::Released, 2048, true});
  const auto ex = b.build(row_of({{true, "Where is the dog?"}, {false, "On the left."}}));
  const std::string header = std::string(text::kLegoSystemPrompt) + "\n\n";
  const auto human = std::string("### Human: Where is the dog?\n"), gpt = std::string("### Assistant: On the left.\n");
  EXPECT_EQ(ex.ids, tok.encode(header + human + gpt + "### ", true));
  const auto h = static_cast<int64_t>(tok.encode(header, true).size());
  const auto n_h = static_cast<int64_t>(tok.encode(human, true).size());
  for (int64_t i = 0; i < static_cast<int64_t>(ex.ids.size()); ++i) {
    const bool masked = i < h || (i >= h + 2 && i < h + n_h);
    EXPECT_EQ(ex.labels[static_cast<size_t>(i)], masked ? kIgnoreLabel : ex.ids[static_cast<size_t>(i)]) << "position " << i;
  }
  EXPECT_EQ(ex.targets, static_cast<int64_t>(ex.ids.size()) - h - (n_h - 2));
  EXPECT_FALSE(ex.truncated);
}

TEST(Examples, HumanTurnMaskingMasksExactlyTheHeaderAndHumanTurnsOfTheWholeConversationTokenizedAtOnce) {
  auto& p = tiny_pipeline();
  const auto& tok = p.tokenizer();
  ExampleBuilder b(p, {Masking::HumanTurns, 2048, true});
  const auto ex = b.build(row_of({{true, "Where is the dog?"}, {false, "On the left."}, {true, "And the cat?"}, {false, "Right."}}));
  const std::vector<std::pair<std::string, bool>> pieces = {
      {std::string(text::kLegoSystemPrompt) + "\n\n", false}, {"### Human: Where is the dog?\n", false},
      {"### Assistant: On the left.\n", true}, {"### Human: And the cat?\n", false},
      {"### Assistant: Right.\n", true}, {"### ", true}};
  std::string whole;
  for (const auto& [piece, target] : pieces) whole += piece;
  // The ids an inference prompt of the same text has: no piece starts with a dummy-prefix U+2581 before "###".
  const auto ids = tok.encode(whole, true);
  EXPECT_EQ(ex.ids, ids);
  EXPECT_EQ(ex.ids, ExampleBuilder(p, {Masking::Released, 2048, true}).build(row_of({{true, "Where is the dog?"},
      {false, "On the left."}, {true, "And the cat?"}, {false, "Right."}})).ids);
  std::vector<int64_t> want_labels{kIgnoreLabel};  // BOS
  std::string prefix;
  for (const auto& [piece, target] : pieces) {
    const auto before = tok.encode(prefix, true).size();
    prefix += piece;
    const auto after = tok.encode(prefix, true).size();
    ASSERT_LE(after, ids.size());
    for (auto i = before; i < after; ++i) want_labels.push_back(target ? ids[i] : kIgnoreLabel);
  }
  EXPECT_EQ(ex.labels, want_labels);
  EXPECT_EQ(tok.decode(std::vector<int64_t>(ids.begin() + 1, ids.end())), whole);
}

TEST(Examples, TheModelsSystemPromptHeadsTrainingExamplesAndPrompts) {
  TempDir dir;
  auto host = std::make_shared<host::PluginHost>();
  auto cfg = lego::testing::tiny_config();
  cfg.set("model.system_prompt", "Be brief.");
  init_model(cfg, dir / "m", 11, *host);  // copies [model] system_prompt into model.ini
  auto p = Pipeline::load(dir / "m", {}, host);
  EXPECT_EQ(p->system_prompt(), "Be brief.");
  ExampleBuilder b(*p, {Masking::HumanTurns, 2048, true});
  const auto ex = b.build(row_of({{true, "Where?"}, {false, "Here."}}));
  EXPECT_EQ(ex.ids, p->tokenizer().encode("Be brief.\n\n### Human: Where?\n### Assistant: Here.\n### ", true));
  Request r;
  EXPECT_EQ(p->prompt(r, "Where?"), "Be brief.###Human: Where?###Assistant:");
  r.system = "";
  EXPECT_EQ(p->prompt(r, "Where?"), "###Human: Where?###Assistant:");  // a request's own, even empty, wins
  // Without the key: conv_lego's.
  EXPECT_EQ(tiny_pipeline().system_prompt(), text::kLegoSystemPrompt);
}

TEST(Examples, MediaMoveToTheFrontOfTheirTurnInMediaOrderAndExpandToTheirBlocks) {
  auto& p = tiny_pipeline();
  ExampleBuilder b(p, {Masking::Released, 4096, true});
  const auto ex = b.build(row_of({{true, "Look <image> and listen <sound> now"}, {false, "ok"}},
                                  {{"image", "a.png"}, {"sound", "b.wav"}}));
  const auto text = p.tokenizer().decode(ex.ids);
  const auto sound = text.find("<so_start>"), image = text.find("<im_start>"), look = text.find("Look");
  ASSERT_NE(sound, std::string::npos);
  ASSERT_NE(image, std::string::npos);
  EXPECT_LT(sound, image);  // released order: sound, video, image
  EXPECT_LT(image, look);
  ASSERT_EQ(ex.media.size(), 2u);
  EXPECT_EQ(ex.media[0].modality, "sound");
  EXPECT_EQ(ex.media[1].modality, "image");
  const auto patches = std::count(ex.ids.begin(), ex.ids.end(), p.tokenizer().token_id("<im_patch>"));
  EXPECT_EQ(patches, p.modality("image").tokens());
}

TEST(Examples, PlaceholderCountsMustMatchTheMediaAndMediaBlocksAreNeverCut) {
  auto& p = tiny_pipeline();
  ExampleBuilder b(p, {Masking::Released, 2048, true});
  EXPECT_NE(error_of([&] { b.build(row_of({{true, "<image><image> two"}, {false, "ok"}}, {{"image", "a.png"}})); })
                .find("t.json row 1: 2 <image> placeholders but 1 image files"),
            std::string::npos);
  // Media with no placeholder at all go in front of the first human turn.
  const auto placed = b.build(row_of({{true, "what?"}, {false, "ok"}}, {{"image", "a.png"}}));
  EXPECT_EQ(placed.media.size(), 1u);
  // A limit that the media block crosses: the row is too long, not cut.
  const auto tokens = p.modality("image").tokens();
  ExampleBuilder short_builder(p, {Masking::Released, tokens + 40, true});
  EXPECT_NE(error_of([&] { short_builder.build(row_of({{true, "<image>\nq"}, {false, "ok"}}, {{"image", "a.png"}})); })
                .find("too long"),
            std::string::npos);
  // A limit inside the text: truncated, and the labels past the cut are gone with it.
  const auto full = b.build(row_of({{true, "a question"}, {false, std::string(200, 'x')}}));
  ExampleBuilder cut(p, {Masking::Released, static_cast<int64_t>(full.ids.size()) - 10, true});
  const auto ex = cut.build(row_of({{true, "a question"}, {false, std::string(200, 'x')}}));
  EXPECT_TRUE(ex.truncated);
  EXPECT_EQ(ex.ids.size(), full.ids.size() - 10);
  EXPECT_GT(ex.targets, 0);
  // Cut before the answer begins: every label masked, reported as targets == 0.
  ExampleBuilder tiny_cut(p, {Masking::HumanTurns, 20, true});
  EXPECT_EQ(tiny_cut.build(row_of({{true, "a question"}, {false, "an answer"}})).targets, 0);
}

TEST(Loader, EpochBatchesAreASeededPermutationGroupedByLength) {
  std::vector<int64_t> lengths;
  for (int i = 0; i < 103; ++i) lengths.push_back((i * 37) % 100);
  const auto a = epoch_batches(lengths, 8, 1, 0, true, 4);
  EXPECT_EQ(a, epoch_batches(lengths, 8, 1, 0, true, 4));
  EXPECT_NE(a, epoch_batches(lengths, 8, 1, 1, true, 4));
  std::multiset<size_t> seen;
  for (const auto& b : a) {
    EXPECT_LE(b.size(), 8u);
    for (size_t i : b) seen.insert(i);
    for (size_t k = 1; k < b.size(); ++k) EXPECT_GE(lengths[b[k - 1]], lengths[b[k]]);  // sorted within a batch
  }
  EXPECT_EQ(seen.size(), lengths.size());
  EXPECT_EQ(std::set<size_t>(seen.begin(), seen.end()).size(), lengths.size());
}

TEST(Templates, FillSlotsAndRefuseBadFiles) {
  TempDir dir;
  const auto t = TemplateSet::load(write(dir / "t.txt", "# comment\n\nOutput the coordinate of {exp}\n  Where is {exp}?  \n"));
  ASSERT_EQ(t.size(), 2u);
  EXPECT_EQ(t.fill(0, {{"exp", "the red circle"}}), "Output the coordinate of the red circle");
  EXPECT_EQ(t.fill(1, {{"exp", "it"}}), "Where is it?");
  EXPECT_NE(error_of([&] { t.fill(0, {}); }).find("needs a value for {exp}"), std::string::npos);
  EXPECT_NE(error_of([&] { TemplateSet::load(write(dir / "e.txt", "# nothing\n")); }).find("no phrasing"), std::string::npos);
  EXPECT_NE(error_of([&] { TemplateSet::load(write(dir / "u.txt", "Where is {exp\n")); }).find("line 1 has an unclosed"),
            std::string::npos);
  EXPECT_NE(error_of([&] { TemplateSet::load(write(dir / "s.txt", "ok {Bad Slot}\n")); }).find("line 1 has a slot"),
            std::string::npos);
  // The shipped templates load and have at least 10 phrasings each.
  for (const auto* name : {"rec", "temporal", "sound_localization", "caption"}) {
    const auto shipped = TemplateSet::load(lego::testing::source_dir() / "configs/templates" / (std::string(name) + ".txt"));
    EXPECT_GE(shipped.size(), 10u) << name;
  }
}

}  // namespace
}  // namespace lego::data
