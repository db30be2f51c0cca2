// lego convert: hand-made files in each source's published format, converted to the released training
// JSON; exact boxes (after padding to the square) and spans, the counts of what is dropped and why, seeded
// phrasing, and the errors of inputs that are not in the source's format.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <map>
#include <set>
#include <string>

#include "build_paths.h"
#include "lego/data/convert.h"
#include "lego/data/templates.h"
#include "test_files.h"

namespace {

using lego::ErrorKind;
using lego::data::convert;
using lego::data::ConvertOptions;
using lego::testing::expect_error;
using lego::testing::TempDir;
using lego::testing::write_bytes;
using nlohmann::json;

// A protocol-2 pickle of `v` as Python 2's cPickle writes it: containers memoised, dict keys as byte
// strings memoised and fetched again by BINGET when repeated.
class Pickler {
 public:
  std::string dump(const json& v) {
    out_ = std::string("\x80\x02", 2);
    write(v);
    out_ += '.';
    return out_;
  }

 private:
  void u32(size_t n) {
    for (int k = 0; k < 4; ++k) out_.push_back(static_cast<char>((n >> (8 * k)) & 0xff));
  }
  void memo() {
    out_ += 'q';
    out_.push_back(static_cast<char>(next_++));
  }
  void key(const std::string& k) {
    if (const auto it = keys_.find(k); it != keys_.end()) {
      out_ += 'h';
      out_.push_back(static_cast<char>(it->second));
      return;
    }
    out_ += 'U';
    out_.push_back(static_cast<char>(k.size()));
    out_ += k;
    keys_[k] = next_;
    memo();
  }
  void write(const json& v) {
    if (v.is_object()) {
      out_ += "}";
      memo();
      out_ += '(';
      for (const auto& [k, x] : v.items()) {
        key(k);
        write(x);
      }
      out_ += 'u';
    } else if (v.is_array()) {
      out_ += "]";
      memo();
      out_ += '(';
      for (const auto& x : v) write(x);
      out_ += 'e';
    } else if (v.is_string()) {
      out_ += 'X';
      u32(v.get_ref<const std::string&>().size());
      out_ += v.get<std::string>();
    } else if (v.is_number_integer()) {
      out_ += 'J';
      u32(static_cast<size_t>(static_cast<uint32_t>(v.get<int32_t>())));
    } else {
      ADD_FAILURE() << "the test pickler writes no " << v.type_name();
    }
  }
  std::string out_;
  std::map<std::string, int> keys_;
  int next_ = 0;
};

class Convert : public ::testing::Test {
 protected:
  // Templates with one phrasing each, so that questions are exact.
  void SetUp() override {
    std::filesystem::create_directories(dir / "templates");
    write_bytes(dir / "templates/rec.txt", "Output the coordinate of {exp}\n");
    write_bytes(dir / "templates/region_caption.txt", "What is in {box}?\n");
    write_bytes(dir / "templates/temporal.txt", "When does {event}?\n");
    write_bytes(dir / "templates/dense_caption.txt", "Describe the events.\n");
    write_bytes(dir / "templates/audio_caption.txt", "Describe the sound.\n");
    write_bytes(dir / "templates/sound_localization.txt", "Where does the sound come from?\n");
  }
  ConvertOptions options(const std::string& source, std::vector<std::string> files) {
    ConvertOptions o;
    o.source = source;
    for (const auto& f : files) o.inputs.push_back(dir / f);
    o.templates_dir = dir / "templates";
    return o;
  }
  // Items and report of a conversion.
  std::pair<json, json> run(const ConvertOptions& o) {
    const auto r = convert(o);
    return {json::parse(r.json), json::parse(r.report.to_json())};
  }
  static json item(const std::string& id, std::map<std::string, std::string> media, const std::string& human,
                   const std::string& gpt) {
    json j;
    j["id"] = id;
    for (const auto& [k, v] : media) j[k] = v;
    j["conversations"] = {{{"from", "human"}, {"value", human}}, {{"from", "gpt"}, {"value", gpt}}};
    return j;
  }
  static json dropped(json report) { return report["dropped"]; }

  void write_refcoco() {
    // Picture 1 is 640 x 480: padded by 80 rows above; picture 2 is 300 x 600: padded by 150 columns.
    const json instances = {
        {"images", {{{"id", 1}, {"width", 640}, {"height", 480}, {"file_name", "COCO_train2014_000000000001.jpg"}},
                    {{"id", 2}, {"width", 300}, {"height", 600}, {"file_name", "COCO_train2014_000000000002.jpg"}}}},
        {"annotations", {{{"id", 10}, {"image_id", 1}, {"bbox", {64, 48, 256, 112}}},
                         {{"id", 20}, {"image_id", 2}, {"bbox", {0, 60, 300, 540}}},
                         {{"id", 30}, {"image_id", 1}, {"bbox", {600, 10, 100, 50}}},
                         {{"id", 40}, {"image_id", 1}, {"bbox", {10, 10, 0, 20}}}}}};
    write_bytes(dir / "instances.json", instances.dump());
    auto ref = [](int ref_id, int ann_id, const std::string& split, json sentences) {
      return json{{"ref_id", ref_id}, {"ann_id", ann_id}, {"split", split}, {"sentences", sentences}};
    };
    auto sent = [](int id, const std::string& s) { return json{{"sent_id", id}, {"sent", s}}; };
    const json refs = {ref(0, 10, "train", {sent(0, "the man on the left"), sent(1, "the  man on the left "), sent(2, " ")}),
                       ref(1, 20, "train", {sent(3, "tall tree")}),
                       ref(2, 30, "train", {sent(4, "dog")}),
                       ref(3, 10, "val", {sent(5, "the man")}),
                       ref(4, 99, "train", {sent(6, "cat")}),
                       ref(5, 40, "train", {sent(7, "zero")}),
                       {{"ref_id", 6}, {"ann_id", 10}, {"split", "train"}}};
    write_bytes(dir / "refs(unc).p", Pickler().dump(refs));
  }

  TempDir dir;
};

TEST_F(Convert, RefcocoBoxesAreRelativeToThePaddedSquareAndBadRefsAreCounted) {
  write_refcoco();
  const auto [items, report] = run(options("refcoco", {"refs(unc).p", "instances.json"}));
  EXPECT_EQ(items, json::array({item("refcoco-0-0", {{"image", "COCO_train2014_000000000001.jpg"}},
                                     "<image>\nOutput the coordinate of the man on the left", "[0.100, 0.200, 0.500, 0.375]"),
                                item("refcoco-1-3", {{"image", "COCO_train2014_000000000002.jpg"}},
                                     "<image>\nOutput the coordinate of tall tree", "[0.250, 0.100, 0.750, 1.000]")}));
  EXPECT_EQ(report["read"], 9);
  EXPECT_EQ(report["written"], 2);
  EXPECT_EQ(dropped(report), json::parse(R"({"duplicate": 1, "text_too_short": 1, "invalid_box": 2, "other_split": 1,
                                             "unknown_reference": 1, "missing_field": 1})"));
}

TEST_F(Convert, RefcocoSplitLimitAndMediaPrefix) {
  write_refcoco();
  auto o = options("refcocog", {"refs(unc).p", "instances.json"});
  o.split = "val";
  o.media_prefix = "train2014/";
  auto [items, report] = run(o);
  ASSERT_EQ(items.size(), 1u);
  EXPECT_EQ(items[0]["id"], "refcocog-3-5");
  EXPECT_EQ(items[0]["image"], "train2014/COCO_train2014_000000000001.jpg");
  o.split = "";
  o.limit = 1;
  std::tie(items, report) = run(o);
  EXPECT_EQ(items.size(), 1u);
  EXPECT_EQ(report["written"], 1);
  EXPECT_EQ(report["read"], 1);
}

TEST_F(Convert, SeededPhrasingIsDeterministicAndDrawsFromTheTemplates) {
  write_refcoco();
  auto o = options("refcoco", {"refs(unc).p", "instances.json"});
  o.templates_dir = lego::testing::source_dir() / "configs/templates";
  o.split = "";
  o.min_words = 1;
  // Many phrases, so the draws of two seeds cannot all agree by chance.
  json refs = json::array();
  for (int i = 0; i < 40; ++i) refs.push_back({{"ref_id", i}, {"ann_id", 10}, {"split", "train"}, {"sentences", {{{"sent_id", i}, {"sent", "man " + std::to_string(i)}}}}});
  write_bytes(dir / "refs(unc).p", Pickler().dump(refs));
  o.seed = 5;
  const auto a = convert(o).json;
  EXPECT_EQ(convert(o).json, a);
  o.seed = 6;
  const auto b = convert(o).json;
  EXPECT_NE(b, a);
  const auto rec = lego::data::TemplateSet::load(o.templates_dir / "rec.txt");
  std::set<size_t> used;
  const auto items = json::parse(a);
  ASSERT_EQ(items.size(), 40u);
  for (size_t i = 0; i < items.size(); ++i) {
    const auto human = items[i]["conversations"][0]["value"].get<std::string>();
    bool found = false;
    for (size_t k = 0; k < rec.size(); ++k) {
      if (human == "<image>\n" + rec.fill(k, {{"exp", "man " + std::to_string(i)}})) {
        found = true;
        used.insert(k);
      }
    }
    EXPECT_TRUE(found) << human;
  }
  EXPECT_GT(used.size(), 3u);
}

TEST_F(Convert, VisualGenomeRegionsBecomeRegionCaptions) {
  write_bytes(dir / "image_data.json",
              R"([{"image_id": 1, "width": 800, "height": 600, "url": "https://cs.stanford.edu/people/rak248/VG_100K_2/1.jpg"}])");
  write_bytes(dir / "region_descriptions.json", R"([
    {"id": 1, "regions": [
      {"region_id": 11, "width": 400, "height": 300, "image_id": 1, "phrase": "a red car", "y": 0, "x": 0},
      {"region_id": 12, "width": 400, "height": 300, "image_id": 1, "phrase": "A red  car", "y": 0, "x": 0},
      {"region_id": 13, "width": 200, "height": 10, "image_id": 1, "phrase": "sky", "y": 0, "x": 700},
      {"region_id": 14, "width": 20, "height": 10, "image_id": 1, "y": 0, "x": 0}]},
    {"id": 2, "regions": [{"region_id": 21, "width": 4, "height": 3, "image_id": 2, "phrase": "tree", "y": 0, "x": 0}]}])");
  const auto [items, report] = run(options("vg-regions", {"region_descriptions.json", "image_data.json"}));
  EXPECT_EQ(items, json::array({item("vg-11", {{"image", "VG_100K_2/1.jpg"}}, "<image>\nWhat is in [0.000, 0.125, 0.500, 0.500]?",
                                     "a red car")}));
  EXPECT_EQ(dropped(report), json::parse(R"({"duplicate": 1, "invalid_box": 1, "missing_field": 1, "unknown_reference": 1})"));
}

TEST_F(Convert, VggssBoxesUseTheFrameSizesWhenGiven) {
  write_bytes(dir / "vggss.json", R"([{"file": "f1", "class": "dog barking", "bbox": [[0.1, 0.2, 0.5, 0.6]]},
    {"file": "f2", "class": "x", "bbox": [[0.1, 0.2, 1.5, 0.6]]}, {"file": "f3", "class": "x", "bbox": []},
    {"file": "f4", "class": "x", "bbox": [[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]]}])");
  write_bytes(dir / "sizes.csv", "file,width,height\nf1,200,100\nf2,100,100\nf3,10,10\n");
  auto [items, report] = run(options("vggss", {"vggss.json", "sizes.csv"}));
  EXPECT_EQ(items, json::array({item("vggss-f1", {{"image", "f1.jpg"}, {"sound", "f1.wav"}},
                                     "<image>\n<sound>\nWhere does the sound come from?", "[0.100, 0.350, 0.500, 0.550]")}));
  EXPECT_EQ(dropped(report), json::parse(R"({"invalid_box": 1, "missing_field": 1, "unknown_reference": 1})"));
  // Without sizes the frame is taken as square: the boxes stay as annotated; several boxes are listed.
  std::tie(items, report) = run(options("vggss", {"vggss.json"}));
  ASSERT_EQ(items.size(), 2u);
  EXPECT_EQ(items[0]["conversations"][1]["value"], "[0.100, 0.200, 0.500, 0.600]");
  EXPECT_EQ(items[1]["conversations"][1]["value"], "[0.000, 0.000, 0.500, 0.500], [0.500, 0.500, 1.000, 1.000]");
}

TEST_F(Convert, CharadesStaSpansAreRelativeToTheVideoLength) {
  write_bytes(dir / "Charades_v1_train.csv",
              "id,subject,scene,quality,relevance,verified,script,objects,descriptions,actions,length\n"
              "AO8RW,s1,Kitchen,6,7,Yes,\"A person, putting a book.\",book,\"They put it, then go\",c001 0.0 5.0,33.67\n"
              "3IEBC,s2,Hall,5,7,Yes,Opens,door,Opens,c002 1.0 2.0,20.00\n");
  write_bytes(dir / "charades_sta_train.txt",
              "AO8RW 0.0 6.9##a person is putting a book on a shelf.\n"
              "3IEBC 5.0 15.0##person opens the door.\r\n"
              "3IEBC 15.0 5.0##person closes the door.\n"
              "3IEBC 10 25##person leaves.\n"
              "ZZZZZ 1 2##person sits.\n"
              "3IEBC 5.0 15.0##person opens the door.\n\n");
  const auto [items, report] = run(options("charades-sta", {"charades_sta_train.txt", "Charades_v1_train.csv"}));
  EXPECT_EQ(items, json::array({item("charades-sta-1", {{"video", "AO8RW.mp4"}},
                                     "<video>\nWhen does a person is putting a book on a shelf?", "{0.00, 0.20}"),
                                item("charades-sta-2", {{"video", "3IEBC.mp4"}}, "<video>\nWhen does person opens the door?",
                                     "{0.25, 0.75}")}));
  EXPECT_EQ(report["read"], 6);
  EXPECT_EQ(dropped(report), json::parse(R"({"invalid_span": 2, "unknown_reference": 1, "duplicate": 1})"));
}

TEST_F(Convert, DidemoTakesTheAnnotatorsMostFrequentSegments) {
  write_bytes(dir / "train_data.json", R"([
    {"annotation_id": 7, "description": "the dog jumps.", "video": "v1.mp4", "times": [[1, 2], [0, 0], [1, 2], [3, 3]], "num_segments": 6},
    {"annotation_id": 8, "description": "too late", "video": "v1.mp4", "times": [[4, 6]]},
    {"annotation_id": 9, "video": "v2.mp4", "times": [[0, 1]]},
    {"annotation_id": 10, "description": "a short one", "video": "v3.mp4", "times": [[3, 4]], "num_segments": 5}])");
  const auto [items, report] = run(options("didemo", {"train_data.json"}));
  EXPECT_EQ(items, json::array({item("didemo-7", {{"video", "v1.mp4"}}, "<video>\nWhen does the dog jumps?", "{0.17, 0.50}"),
                                item("didemo-10", {{"video", "v3.mp4"}}, "<video>\nWhen does a short one?", "{0.60, 1.00}")}));
  EXPECT_EQ(dropped(report), json::parse(R"({"invalid_span": 1, "missing_field": 1})"));
}

TEST_F(Convert, ActivitynetEventsAreOrderedSpansWithSentences) {
  write_bytes(dir / "train.json", R"({
    "v_a": {"duration": 100.0, "timestamps": [[50, 75], [0, 25], [90, 120]], "sentences": ["Then B.", " First  A.", "Out of range."]},
    "v_b": {"duration": 0, "timestamps": [[0, 1]], "sentences": ["x y"]},
    "v_c": {"duration": 10, "timestamps": [[0, 1]]}})");
  const auto [items, report] = run(options("activitynet-captions", {"train.json"}));
  EXPECT_EQ(items, json::array({item("activitynet-v_a", {{"video", "v_a.mp4"}}, "<video>\nDescribe the events.",
                                     "{0.00, 0.25} First A. {0.50, 0.75} Then B.")}));
  EXPECT_EQ(report["read"], 5);
  EXPECT_EQ(dropped(report), json::parse(R"({"invalid_span": 2, "missing_field": 1})"));
}

TEST_F(Convert, ClothoGivesOneItemPerCaption) {
  write_bytes(dir / "clotho_captions_development.csv",
              "file_name,caption_1,caption_2\n"
              "a.wav,\"Birds sing, loudly.\",Rain falls\n"
              "b.wav,Rain falls,\"rain  falls\"\n"
              "c.wav,,\"Words \"\"quoted\"\" here\"\n");
  auto o = options("clotho", {"clotho_captions_development.csv"});
  o.max_words = 3;
  const auto [items, report] = run(o);
  EXPECT_EQ(items, json::array({item("clotho-1-1", {{"sound", "a.wav"}}, "<sound>\nDescribe the sound.", "Birds sing, loudly."),
                                item("clotho-1-2", {{"sound", "a.wav"}}, "<sound>\nDescribe the sound.", "Rain falls"),
                                item("clotho-2-1", {{"sound", "b.wav"}}, "<sound>\nDescribe the sound.", "Rain falls"),
                                item("clotho-3-2", {{"sound", "c.wav"}}, "<sound>\nDescribe the sound.", "Words \"quoted\" here")}));
  EXPECT_EQ(dropped(report), json::parse(R"({"duplicate": 1, "text_too_short": 1})"));
  o.max_words = 2;
  EXPECT_EQ(run(o).second["dropped"]["text_too_long"], 2);
}

TEST_F(Convert, WavcapsNamesTheFlacOfEachId) {
  write_bytes(dir / "as_final.json", R"({"num_captions_per_audio": 1, "data": [
    {"id": "Yb0RFKhbpFJA.wav", "caption": "A dog barks.", "audio": "wav_path", "duration": 10.0},
    {"id": 180913, "caption": "A car passes by."}, {"id": "456"}]})");
  const auto [items, report] = run(options("wavcaps", {"as_final.json"}));
  EXPECT_EQ(items, json::array({item("wavcaps-Yb0RFKhbpFJA", {{"sound", "Yb0RFKhbpFJA.flac"}}, "<sound>\nDescribe the sound.",
                                     "A dog barks."),
                                item("wavcaps-180913", {{"sound", "180913.flac"}}, "<sound>\nDescribe the sound.", "A car passes by.")}));
  EXPECT_EQ(dropped(report), json::parse(R"({"missing_field": 1})"));
}

TEST_F(Convert, LlavaConversationsAreCheckedAndPassedThrough) {
  write_bytes(dir / "detail_23k.json", R"([
    {"id": "1", "image": "a.jpg", "conversations": [{"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "A cat."}]},
    {"id": "2", "image": "b.jpg", "conversations": [{"from": "human", "value": "What?"}, {"from": "gpt", "value": "A dog."}]},
    {"id": "3", "conversations": [{"from": "gpt", "value": "hi"}, {"from": "human", "value": "hello"}]},
    {"id": "1", "image": "a.jpg", "conversations": [{"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "A cat."}]},
    {"id": "4", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]},
    {"id": "5", "conversations": [{"from": "human", "value": "<image>\nHi"}, {"from": "gpt", "value": "Hello"}]}])");
  auto o = options("llava", {"detail_23k.json"});
  o.media_prefix = "coco/";
  const auto [items, report] = run(o);
  EXPECT_EQ(items, json::array({item("1", {{"image", "coco/a.jpg"}}, "<image>\nWhat?", "A cat."), item("4", {}, "Hi", "Hello")}));
  EXPECT_EQ(dropped(report), json::parse(R"({"missing_placeholder": 1, "bad_turns": 1, "duplicate": 1, "missing_field": 1})"));
}

TEST_F(Convert, BadInputsAreOneErrorNamingTheFile) {
  write_refcoco();
  write_bytes(dir / "not.json", "{\"images\": [");
  write_bytes(dir / "list.json", "[]");
  write_bytes(dir / "evil.p", "cos\nsystem\n(S'ls'\ntR.");
  expect_error([&] { convert(options("refcoco", {"missing.p", "instances.json"})); }, ErrorKind::NotFound, {"missing.p"});
  expect_error([&] { convert(options("refcoco", {"refs(unc).p", "not.json"})); }, ErrorKind::Format, {"not.json", "not JSON"});
  expect_error([&] { convert(options("refcoco", {"refs(unc).p", "list.json"})); }, ErrorKind::Format, {"list.json", "COCO instances"});
  expect_error([&] { convert(options("refcoco", {"evil.p", "instances.json"})); }, ErrorKind::Format, {"evil.p", "not plain data"});
  expect_error([&] { convert(options("refcoco", {"refs(unc).p"})); }, ErrorKind::InvalidArgument, {"refcoco", "two files"});
  expect_error([&] { convert(options("coco-captions", {"list.json"})); }, ErrorKind::InvalidArgument, {"coco-captions", "refcoco"});
  expect_error([&] { convert(options("activitynet-captions", {"list.json"})); }, ErrorKind::Format, {"list.json", "object of videos"});
  expect_error([&] { convert(options("didemo", {"instances.json"})); }, ErrorKind::Format, {"instances.json", "list"});
  write_bytes(dir / "bad_sta.txt", "AO8RW 0.0 6.9##fine.\nAO8RW 0.0 6.9 a missing separator\n");
  write_bytes(dir / "charades.csv", "id,length\nAO8RW,30\n");
  expect_error([&] { convert(options("charades-sta", {"bad_sta.txt", "charades.csv"})); }, ErrorKind::Format,
               {"bad_sta.txt", "line 2"});
  write_bytes(dir / "no_length.csv", "id,subject\nAO8RW,s1\n");
  expect_error([&] { convert(options("charades-sta", {"bad_sta.txt", "no_length.csv"})); }, ErrorKind::Format,
               {"no_length.csv", "'length'"});
  write_bytes(dir / "clotho.csv", "file_name,caption_1\na.wav,\"never closed\nb.wav,x\n");
  expect_error([&] { convert(options("clotho", {"clotho.csv"})); }, ErrorKind::Format, {"clotho.csv", "line 2", "quoted"});
  write_bytes(dir / "ragged.csv", "file_name,caption_1\na.wav,x,y\n");
  expect_error([&] { convert(options("clotho", {"ragged.csv"})); }, ErrorKind::Format, {"ragged.csv", "row 2"});
  auto missing_templates = options("clotho", {"clotho.csv"});
  write_bytes(dir / "clotho.csv", "file_name,caption_1\na.wav,x\n");
  missing_templates.templates_dir = dir / "nowhere";
  expect_error([&] { convert(missing_templates); }, ErrorKind::NotFound, {"audio_caption.txt"});
}

}  // namespace
