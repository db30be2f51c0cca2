#include "lego/data/synthground.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <mutex>
#include <optional>
#include <random>
#include <thread>

#include "lego/data/templates.h"
#include "lego/fs/atomic_file.h"
#include "lego/grounding/grounding.h"
#include "lego/sdk/error.h"

namespace lego::data {
namespace {

using synth::Event;
using synth::EventKind;
using synth::Object;
using synth::Scene;

// The objects' sizes: 8-50 % of the frame's shorter side (the range).
constexpr double kMinSize = 0.08, kMaxSize = 0.5;
constexpr int kMaxObjects = 4;
// Colours closer than this (sum of channel differences) to the background would hide an object.
constexpr int kMinContrast = 150;

const char* colour_name(int c) { return synth::kPalette[static_cast<size_t>(c)].name; }
const char* shape_name(synth::Shape s) { return synth::kShapeNames[static_cast<size_t>(s)]; }

int distance(const std::array<uint8_t, 3>& a, const std::array<uint8_t, 3>& b) {
  int d = 0;
  for (size_t i = 0; i < 3; ++i) d += std::abs(static_cast<int>(a[i]) - static_cast<int>(b[i]));
  return d;
}

class SceneSampler {
 public:
  explicit SceneSampler(uint64_t seed) : rng_(seed) {}

  double uniform(double a, double b) { return std::uniform_real_distribution<double>(a, b)(rng_); }
  int pick(int n) { return std::uniform_int_distribution<int>(0, n - 1)(rng_); }
  uint64_t next() { return rng_(); }

  // A scene of `min_n`..`max_n` objects; with `distinct`, no two share colour and shape; with
  // `unique_shapes`, no two share a shape.
  Scene scene(int min_n, int max_n, bool distinct, bool unique_shapes) {
    Scene s;
    s.seed = next();
    const int sides[] = {192, 224, 256, 288, 320, 352, 384};
    s.width = sides[pick(7)];
    s.height = sides[pick(7)];
    s.background = static_cast<synth::Background>(pick(3));
    auto muted = [&] {
      return std::array<uint8_t, 3>{static_cast<uint8_t>(60 + pick(140)), static_cast<uint8_t>(60 + pick(140)),
                                    static_cast<uint8_t>(60 + pick(140))};
    };
    s.background_rgb = muted();
    s.background_rgb2 = muted();
    s.duration_s = 3 + pick(4);
    const int n = min_n + pick(max_n - min_n + 1);
    for (int tries = 0; static_cast<int>(s.objects.size()) < n && tries < 200; ++tries) {
      Object o;
      o.shape = static_cast<synth::Shape>(pick(synth::kShapes));
      o.colour = visible_colour(s);
      if (o.colour < 0) continue;
      o.size = uniform(kMinSize, n > 2 ? 0.35 : kMaxSize);
      place(s, o);
      o.angle = uniform(-0.4, 0.4);
      bool clash = false;
      for (const auto& other : s.objects) {
        if (distinct && other.shape == o.shape && other.colour == o.colour) clash = true;
        if (unique_shapes && other.shape == o.shape) clash = true;
        if (overlap(s, other, o)) clash = true;
      }
      if (!clash) s.objects.push_back(o);
    }
    return s;
  }

  // A palette colour that stands out from the background, or -1.
  int visible_colour(const Scene& s) {
    for (int tries = 0; tries < 50; ++tries) {
      const int c = pick(synth::kColours);
      const auto& rgb = synth::kPalette[static_cast<size_t>(c)].rgb;
      if (distance(rgb, s.background_rgb) >= kMinContrast && distance(rgb, s.background_rgb2) >= kMinContrast) return c;
    }
    return -1;
  }

  void place(const Scene& s, Object& o) {
    const double side = std::min(s.width, s.height) * o.size;
    const double hx = side / 2 / s.width, hy = side / 2 / s.height;
    o.cx = uniform(hx, 1 - hx);
    o.cy = uniform(hy, 1 - hy);
  }

  // Whether two objects' squares come closer than a small margin.
  static bool overlap(const Scene& s, const Object& a, const Object& b) {
    const double short_side = std::min(s.width, s.height);
    const double ax = a.cx * s.width, ay = a.cy * s.height, bx = b.cx * s.width, by = b.cy * s.height;
    const double reach = (a.size + b.size) / 2 * short_side + 4;
    return std::abs(ax - bx) < reach && std::abs(ay - by) < reach;
  }

 private:
  std::mt19937_64 rng_;
};

std::string describe(const Object& o) { return std::string(colour_name(o.colour)) + " " + shape_name(o.shape); }

// A referring expression that picks out object `i` of `s` alone, or nothing when none of ours can.
std::optional<std::string> refer(const Scene& s, size_t i, SceneSampler& r) {
  const auto& o = s.objects[i];
  std::vector<size_t> twins, same_shape, same_colour;
  for (size_t j = 0; j < s.objects.size(); ++j) {
    if (j == i) continue;
    const auto& p = s.objects[j];
    if (p.shape == o.shape && p.colour == o.colour) twins.push_back(j);
    if (p.shape == o.shape) same_shape.push_back(j);
    if (p.colour == o.colour) same_colour.push_back(j);
  }
  if (twins.empty()) {
    std::vector<std::string> options = {"the " + describe(o)};
    if (same_shape.empty()) options.push_back(std::string("the ") + shape_name(o.shape));
    if (same_colour.empty()) options.push_back(std::string("the ") + colour_name(o.colour) + " object");
    if (o.size < 0.2) options.push_back("the small " + describe(o));
    if (o.size > 0.35) options.push_back("the large " + describe(o));
    // Relations to another object that is itself unique by colour and shape.
    for (size_t j = 0; j < s.objects.size(); ++j) {
      if (j == i) continue;
      const auto& p = s.objects[j];
      bool unique = true;
      for (size_t k = 0; k < s.objects.size(); ++k) {
        if (k != j && s.objects[k].shape == p.shape && s.objects[k].colour == p.colour) unique = false;
      }
      if (!unique) continue;
      const char* rel = nullptr;
      if (o.cx < p.cx - 0.15) rel = "left of";
      else if (o.cx > p.cx + 0.15) rel = "right of";
      else if (o.cy < p.cy - 0.15) rel = "above";
      else if (o.cy > p.cy + 0.15) rel = "below";
      if (rel) options.push_back("the " + describe(o) + " " + rel + " the " + describe(p));
    }
    return options[static_cast<size_t>(r.pick(static_cast<int>(options.size())))];
  }
  if (twins.size() > 1) return std::nullopt;
  const auto& p = s.objects[twins.front()];
  if (o.size > p.size * 1.4) return "the large " + describe(o);
  if (p.size > o.size * 1.4) return "the small " + describe(o);
  if (std::abs(o.cx - p.cx) > 0.15) return "the " + describe(o) + (o.cx < p.cx ? " on the left" : " on the right");
  if (std::abs(o.cy - p.cy) > 0.15) return "the " + describe(o) + (o.cy < p.cy ? " at the top" : " at the bottom");
  return std::nullopt;
}

std::string event_clause(const Scene& s, const Event& e) {
  const auto subject = "the " + describe(s.objects[static_cast<size_t>(e.object)]);
  switch (e.kind) {
    case EventKind::Appear:
      return subject + " appear";
    case EventKind::Move:
      return subject + " move";
    case EventKind::ChangeColour:
      return subject + " turn " + colour_name(e.to_colour);
  }
  return subject;
}

grounding::Box box_of(const std::vector<double>& v) { return {v[0], v[1], v[2], v[3]}; }

// What one modality's files ground, learnt from rendering a probe scene.
struct Capability {
  std::string name;
  std::shared_ptr<Modality> modality;
  size_t box_values = 0;
  bool span = false, singles_out = false;
};

// One row to write: its scene, the modalities that render it and how the row is worded from the result.
struct Job {
  std::string split, task;
  int64_t index = 0;
  Scene scene;
  std::vector<const Capability*> render;  // in the order their media appear
  std::string question;                    // placeholders excluded
  int target = -1;                         // the object the answer's box is of
  std::vector<size_t> caption_order;       // objects a caption lists, left to right
};

nlohmann::json conversation(const std::string& human, const std::string& gpt) {
  return nlohmann::json::array({{{"from", "human"}, {"value", human}}, {{"from", "gpt"}, {"value", gpt}}});
}

}  // namespace

std::map<std::string, int64_t> synth_preset(const std::string& size) {
  int64_t scale = 0;
  if (size == "small") scale = 1;
  else if (size == "full") scale = 10;
  else throw Error(ErrorKind::InvalidArgument, "--size '" + size + "' is not small or full");
  return {{"train.rec", 3000 * scale},    {"train.caption", 600 * scale},  {"train.temporal", 1200 * scale},
          {"train.sound_localization", 1200 * scale}, {"train.rec3d", 3000 * scale},
          {"val.rec", 100 * scale},       {"val.caption", 50 * scale},     {"val.temporal", 100 * scale},
          {"val.sound_localization", 100 * scale},     {"val.rec3d", 100 * scale},
          {"test.rec", 200 * scale},      {"test.caption", 100 * scale},   {"test.temporal", 200 * scale},
          {"test.sound_localization", 200 * scale},    {"test.rec3d", 200 * scale}};
}

SynthSummary write_synthground(const std::vector<std::pair<std::string, std::shared_ptr<Modality>>>& modalities,
                               const SynthOptions& options, const std::function<void(const std::string&)>& progress) {
  auto counts = synth_preset(options.size);
  for (const auto& [key, n] : options.counts) {
    if (!counts.count(key)) {
      throw Error(ErrorKind::InvalidArgument, "--count " + key + ": no such split.task (splits train, val, test; tasks "
                                              "rec, caption, temporal, sound_localization, rec3d)");
    }
    if (n < 0 || n > 10'000'000) throw Error(ErrorKind::InvalidArgument, "--count " + key + " must be in [0, 10000000]");
    counts[key] = n;
  }
  if (options.max_objects < 1 || options.max_objects > kMaxObjects) {
    throw Error(ErrorKind::InvalidArgument, "--max-objects must be in [1, " + std::to_string(kMaxObjects) + "]");
  }
  const int most = options.max_objects;
  const auto rec = TemplateSet::load(options.templates / "rec.txt");
  const auto caption = TemplateSet::load(options.templates / "caption.txt");
  const auto temporal = TemplateSet::load(options.templates / "temporal.txt");
  const auto sound = TemplateSet::load(options.templates / "sound_localization.txt");

  fs::StagedDirectory staged(options.out);
  const auto& dir = staged.path();
  SynthSummary summary;

  // Probe what each modality's files ground with one scene that has everything.
  std::vector<Capability> caps;
  {
    SceneSampler r(options.seed ^ 0x5EEDULL);
    auto probe = r.scene(2, 2, true, true);
    probe.event = Event{0, EventKind::Appear, 0.25, 0.75, 0.5, 0.5, 0};
    probe.sounding = 0;
    std::filesystem::create_directories(dir / "probe");
    for (const auto& [name, m] : modalities) {
      auto got = m->synthesize(probe, dir / "probe" / name);
      if (!got) continue;
      Capability c{name, m};
      if (!got->boxes.empty()) c.box_values = got->boxes.front().size();
      c.span = got->span.has_value();
      c.singles_out = got->singles_out >= 0;
      caps.push_back(c);
    }
    std::filesystem::remove_all(dir / "probe");
  }
  const Capability* boxes = nullptr;
  const Capability* boxes3d = nullptr;
  const Capability* spans = nullptr;
  const Capability* singles = nullptr;
  for (const auto& c : caps) {
    if (!boxes && c.box_values == 4) boxes = &c;
    if (!boxes3d && c.box_values == 6) boxes3d = &c;
    if (!spans && c.span) spans = &c;
    if (!singles && c.singles_out) singles = &c;
  }
  if (!boxes) summary.skipped.push_back("rec, caption, sound_localization: no modality renders media with 2-D boxes");
  if (!spans) summary.skipped.push_back("temporal: no modality renders media with time spans");
  // Most models have no 3-D modality: rec3d is reported as skipped only when a count asked for it.
  const bool asked_3d = std::any_of(options.counts.begin(), options.counts.end(), [](const auto& kv) {
    return kv.second > 0 && kv.first.size() > 6 && kv.first.substr(kv.first.size() - 6) == ".rec3d";
  });
  if (!boxes3d && asked_3d) summary.skipped.push_back("rec3d: no modality renders media with 3-D boxes");
  if (boxes && !singles) summary.skipped.push_back("sound_localization: no modality renders media that single out an object");
  if (caps.empty()) throw Error(ErrorKind::Unsupported, "no modality of the model synthesizes media");

  // All scenes are drawn first, in a fixed order, so the benchmark depends on the seed alone.
  std::vector<Job> jobs;
  uint64_t split_seed = options.seed;
  for (const char* split : kSynthSplits) {
    SceneSampler r(split_seed = split_seed * 6364136223846793005ULL + 1442695040888963407ULL);
    auto add = [&](const char* task, auto&& make) {
      const auto n = counts.at(std::string(split) + "." + task);
      for (int64_t k = 0; k < n; ++k) {
        Job j;
        j.split = split;
        j.task = task;
        j.index = k;
        for (int tries = 0; !make(j); ++tries) {
          if (tries > 1000) throw Error(ErrorKind::InvalidArgument, std::string("cannot draw a ") + task + " scene");
        }
        jobs.push_back(std::move(j));
      }
    };
    // A referring expression to one object of a scene, asked of the media of `renderer` (2-D boxes: rec;
    // 3-D boxes: rec3d), answered with that object's box.
    auto referring = [&](const Capability* renderer) {
      return [&, renderer](Job& j) {
        j.scene = r.scene(1, most, false, false);
        if (j.scene.objects.empty()) return false;
        j.target = r.pick(static_cast<int>(j.scene.objects.size()));
        auto exp = refer(j.scene, static_cast<size_t>(j.target), r);
        if (!exp) return false;
        std::mt19937_64 t(r.next());
        j.question = rec.pick(t, {{"exp", *exp}});
        j.render = {renderer};
        return true;
      };
    };
    if (boxes) {
      add("rec", referring(boxes));
      add("caption", [&](Job& j) {
        j.scene = r.scene(1, std::min(3, most), true, false);
        if (j.scene.objects.empty()) return false;
        for (size_t i = 0; i < j.scene.objects.size(); ++i) j.caption_order.push_back(i);
        std::sort(j.caption_order.begin(), j.caption_order.end(),
                  [&](size_t a, size_t b) { return j.scene.objects[a].cx < j.scene.objects[b].cx; });
        std::mt19937_64 t(r.next());
        j.question = caption.pick(t, {});
        j.render = {boxes};
        return true;
      });
    }
    if (spans) {
      add("temporal", [&](Job& j) {
        j.scene = r.scene(1, std::min(3, most), true, false);
        if (j.scene.objects.empty()) return false;
        Event e;
        e.object = r.pick(static_cast<int>(j.scene.objects.size()));
        e.kind = static_cast<EventKind>(r.pick(3));
        e.t1 = std::round(r.uniform(0.0, 0.7) * 100) / 100;
        e.t2 = std::min(1.0, std::round((e.t1 + r.uniform(0.2, 0.6)) * 100) / 100);
        if (e.kind == EventKind::Move) {
          Object moved = j.scene.objects[static_cast<size_t>(e.object)];
          r.place(j.scene, moved);
          e.to_cx = moved.cx;
          e.to_cy = moved.cy;
        }
        if (e.kind == EventKind::ChangeColour) {
          e.to_colour = r.visible_colour(j.scene);
          if (e.to_colour < 0 || e.to_colour == j.scene.objects[static_cast<size_t>(e.object)].colour) return false;
        }
        j.scene.event = e;
        std::mt19937_64 t(r.next());
        j.question = temporal.pick(t, {{"event", event_clause(j.scene, e)}});
        j.render = {spans};
        return true;
      });
    }
    if (boxes3d) add("rec3d", referring(boxes3d));
    if (boxes && singles) {
      add("sound_localization", [&](Job& j) {
        j.scene = r.scene(1, most, false, true);
        if (j.scene.objects.empty()) return false;
        j.target = r.pick(static_cast<int>(j.scene.objects.size()));
        j.scene.sounding = j.target;
        std::mt19937_64 t(r.next());
        j.question = sound.pick(t, {});
        j.render = {boxes, singles};
        return true;
      });
    }
  }

  // Rendering, in parallel; rows keep the jobs' order.
  std::vector<nlohmann::json> rows(jobs.size());
  std::atomic<size_t> next{0}, done{0};
  std::mutex error_mutex;
  std::exception_ptr error;
  auto worker = [&] {
    for (size_t k = next++; k < jobs.size(); k = next++) {
      try {
        const auto& j = jobs[k];
        const auto media_dir = std::filesystem::path("media") / j.split;
        char stem[64];
        std::snprintf(stem, sizeof(stem), "%s-%07lld", j.task.c_str(), static_cast<long long>(j.index));
        nlohmann::json row = {{"id", j.split + "-" + stem}};
        std::string human;
        std::vector<synth::Rendered> got;
        for (const auto* c : j.render) {
          auto rendered = c->modality->synthesize(j.scene, dir / media_dir / (std::string(stem) + "-" + c->name));
          if (!rendered) throw Error(ErrorKind::Plugin, c->name + ": synthesize rendered nothing for a scene it rendered before");
          row[c->name] = (media_dir / rendered->file.filename()).string();
          human += c->modality->placeholder() + "\n";
          got.push_back(std::move(*rendered));
        }
        std::string answer;
        if (j.task == "rec3d") {
          answer = grounding::format_box_values(got.front().boxes.at(static_cast<size_t>(j.target)));
        } else if (j.task == "rec" || j.task == "sound_localization") {
          answer = grounding::format_box(box_of(got.front().boxes.at(static_cast<size_t>(j.target))));
        } else if (j.task == "caption") {
          for (size_t n = 0; n < j.caption_order.size(); ++n) {
            const auto i = j.caption_order[n];
            const auto what = describe(j.scene.objects[i]);
            const char* article = std::string("aeiou").find(what.front()) != std::string::npos ? "an " : "a ";
            answer += std::string(n == 0 ? "There is " : n + 1 == j.caption_order.size() ? " and " : ", ") + article +
                      what + " " + grounding::format_box(box_of(got.front().boxes.at(i)));
          }
          answer += ".";
        } else {
          const auto& span = got.front().span;
          if (!span) throw Error(ErrorKind::Plugin, j.render.front()->name + ": synthesize gave no span for an event");
          answer = grounding::format_span({(*span)[0], (*span)[1]});
        }
        row["conversations"] = conversation(human + j.question, answer);
        rows[k] = std::move(row);
      } catch (...) {
        std::lock_guard<std::mutex> lock(error_mutex);
        if (!error) error = std::current_exception();
        next = jobs.size();
      }
      const size_t d = ++done;
      if (progress && d % 500 == 0) progress("rendered " + std::to_string(d) + "/" + std::to_string(jobs.size()));
    }
  };
  for (const char* split : kSynthSplits) std::filesystem::create_directories(dir / "media" / split);
  std::vector<std::thread> threads;
  for (int t = 0; t < std::clamp(options.threads, 1, 64); ++t) threads.emplace_back(worker);
  for (auto& t : threads) t.join();
  if (error) std::rethrow_exception(error);

  std::map<std::string, nlohmann::json> files;
  for (size_t k = 0; k < jobs.size(); ++k) {
    const auto key = jobs[k].split + "-" + jobs[k].task;
    if (!files.count(key)) files[key] = nlohmann::json::array();
    files[key].push_back(std::move(rows[k]));
  }
  for (auto& [key, array] : files) {
    summary.rows[key] = static_cast<int64_t>(array.size());
    fs::write_file_atomically(dir / (key + ".json"), array.dump(1) + "\n");
  }
  staged.commit();
  return summary;
}

}  // namespace lego::data
