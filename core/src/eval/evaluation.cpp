#include "lego/eval/evaluation.h"

#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <random>
#include <set>
#include <sstream>

#include "lego/data/rows.h"
#include "lego/generate/generator.h"
#include "lego/grounding/grounding.h"
#include "lego/pipeline/pipeline.h"
#include "lego/sdk/error.h"

namespace lego::eval {
namespace {

// The release's REC threshold (Ferret's evaluator) and the usual temporal thresholds.
constexpr double kBoxThreshold = 0.5;
// 3-D grounding is scored at IoU 0.25 and 0.5, as ScanRefer reports it.
constexpr double kBox3dThresholds[] = {0.25, 0.5};
constexpr double kSpanThresholds[] = {0.3, 0.5, 0.7};
constexpr int kChanceDraws = 10;

std::vector<std::string> words(const std::string& text) {
  std::vector<std::string> out;
  std::string w;
  for (char c : text) {
    if (std::isalnum(static_cast<unsigned char>(c))) {
      w += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    } else if (!w.empty()) {
      out.push_back(w);
      w.clear();
    }
  }
  if (!w.empty()) out.push_back(w);
  return out;
}

// The text with its boxes and spans cut out.
std::string without_grounding(const std::string& text) {
  const auto m = grounding::parse(text);
  std::vector<std::pair<size_t, size_t>> cuts;
  for (const auto& b : m.boxes) cuts.emplace_back(b.begin, b.end);
  for (const auto& s : m.spans) cuts.emplace_back(s.begin, s.end);
  std::sort(cuts.begin(), cuts.end());
  std::string out;
  size_t at = 0;
  for (const auto& [b, e] : cuts) {
    if (b >= at) out += text.substr(at, b - at);
    at = std::max(at, e);
  }
  return out + text.substr(std::min(at, text.size()));
}

double word_f1(const std::string& prediction, const std::string& reference) {
  auto p = words(without_grounding(prediction)), r = words(without_grounding(reference));
  if (p.empty() || r.empty()) return p.empty() && r.empty() ? 1.0 : 0.0;
  std::multiset<std::string> rs(r.begin(), r.end());
  double common = 0;
  for (const auto& w : p) {
    auto it = rs.find(w);
    if (it != rs.end()) {
      ++common;
      rs.erase(it);
    }
  }
  if (common == 0) return 0;
  const double precision = common / static_cast<double>(p.size()), recall = common / static_cast<double>(r.size());
  return 2 * precision * recall / (precision + recall);
}

double box_recall(const std::string& prediction, const std::string& reference) {
  const auto p = grounding::parse(prediction).boxes, r = grounding::parse(reference).boxes;
  if (r.empty()) return 1;
  std::vector<bool> used(p.size(), false);
  double hit = 0;
  for (const auto& rb : r) {
    for (size_t i = 0; i < p.size(); ++i) {
      if (!used[i] && iou(p[i].box, rb.box) >= kBoxThreshold) {
        used[i] = true;
        ++hit;
        break;
      }
    }
  }
  return hit / static_cast<double>(r.size());
}

std::map<std::string, double> metrics_of(const std::string& task, const std::vector<std::string>& predictions,
                                         const std::vector<std::string>& references) {
  std::map<std::string, double> m;
  const auto n = static_cast<double>(std::max<size_t>(1, references.size()));
  if (task == "caption") {
    double f1 = 0, recall = 0;
    for (size_t i = 0; i < references.size(); ++i) {
      f1 += word_f1(predictions[i], references[i]);
      recall += box_recall(predictions[i], references[i]);
    }
    m["word_f1"] = f1 / n;
    m["grounded_recall@0.5"] = recall / n;
    return m;
  }
  double sum = 0;
  std::map<double, double> hits;
  for (size_t i = 0; i < references.size(); ++i) {
    const double s = score_answer(task, predictions[i], references[i]);
    sum += s;
    if (task == "temporal") {
      for (double t : kSpanThresholds) hits[t] += s >= t ? 1 : 0;
    } else if (task == "rec3d") {
      for (double t : kBox3dThresholds) hits[t] += s >= t ? 1 : 0;
    } else {
      hits[kBoxThreshold] += s >= kBoxThreshold ? 1 : 0;
    }
  }
  m["miou"] = sum / n;
  char key[32];
  for (const auto& [t, h] : hits) {
    std::snprintf(key, sizeof(key), task == "temporal" ? "r1@%g" : "acc@%g", t);
    m[key] = h / n;
  }
  return m;
}

}  // namespace

std::string canonical_task(const std::string& task) {
  if (task == "rec" || task == "temporal" || task == "caption" || task == "sound_localization" || task == "rec3d") return task;
  if (task == "sound-loc") return "sound_localization";
  throw Error(ErrorKind::InvalidArgument, "--task '" + task + "' is not rec, temporal, sound-loc, caption or rec3d");
}

double score_answer(const std::string& task, const std::string& prediction, const std::string& reference) {
  if (task == "caption") return word_f1(prediction, reference);
  const auto p = grounding::parse(prediction), r = grounding::parse(reference);
  if (task == "temporal") {
    if (r.spans.empty() || p.spans.empty()) return 0;
    return iou(p.spans.front().span, r.spans.front().span);
  }
  // rec3d scores 3-D boxes (6 values), the other tasks 2-D ones.
  const size_t values = task == "rec3d" ? 6 : 4;
  auto first_box = [values](const grounding::Mentions& m) -> const grounding::BoxMention* {
    for (const auto& b : m.boxes) {
      if (b.values.size() == values) return &b;
    }
    return nullptr;
  };
  const auto* pb = first_box(p);
  const auto* rb = first_box(r);
  if (!pb || !rb) return 0;
  return grounding::box_iou(pb->values, rb->values);
}

EvalReport evaluate(Pipeline& pipeline, const EvalOptions& options,
                    const std::function<void(int64_t, int64_t)>& progress) {
  const auto started = std::chrono::steady_clock::now();
  EvalReport report;
  report.task = canonical_task(options.task);
  report.data = options.data.string();
  if (options.batch_size < 1 || options.batch_size > 4096) {
    throw Error(ErrorKind::InvalidArgument, "--batch-size must be in [1, 4096]");
  }
  std::map<std::string, std::filesystem::path> roots;
  for (const auto& name : pipeline.media_order()) {
    auto it = options.roots.find(name);
    roots[name] = it != options.roots.end() ? it->second : options.data.parent_path();
  }
  auto rows = data::read_rows(options.data, roots);
  if (options.limit > 0 && static_cast<int64_t>(rows.size()) > options.limit) rows.resize(static_cast<size_t>(options.limit));
  if (rows.empty()) throw Error(ErrorKind::Format, options.data.string() + ": no rows to evaluate");

  generate::SamplingOptions sampling;
  sampling.max_new_tokens = options.max_new_tokens;
  sampling.stop.push_back(text::kLegoStop);
  sampling.validate();
  generate::Generator generator(pipeline.llm().net, pipeline.llm().tokenizer);
  torch::NoGradGuard no_grad;
  std::vector<std::string> predictions, references;
  for (size_t at = 0; at < rows.size(); at += static_cast<size_t>(options.batch_size)) {
    const auto end = std::min(rows.size(), at + static_cast<size_t>(options.batch_size));
    std::vector<std::string> prompts;
    std::vector<MediaInput> media;
    std::vector<std::pair<size_t, size_t>> media_range;
    for (size_t i = at; i < end; ++i) {
      const auto& row = rows[i];
      // The question: every turn before the last answer; earlier answers stay in the history.
      size_t last = row.messages.size();
      while (last > 0 && row.messages[last - 1].human) --last;
      if (last == 0) throw Error(ErrorKind::Format, row.where() + ": no assistant turn to compare with");
      std::vector<text::Turn> history;
      std::string message;
      for (size_t k = 0; k + 1 < last; ++k) {
        if (row.messages[k].human) {
          message += (message.empty() ? "" : "\n") + row.messages[k].value;
        } else {
          history.push_back({message, row.messages[k].value});
          message.clear();
        }
      }
      std::vector<MediaInput> mine;
      for (const auto& m : row.media) mine.push_back({m.modality, m.file});
      Request request;
      request.history = history;
      request.message = message;
      const auto placed = pipeline.place_media(message, mine);
      prompts.push_back(pipeline.prompt(request, placed));
      media_range.emplace_back(media.size(), mine.size());
      media.insert(media.end(), mine.begin(), mine.end());
      references.push_back(row.messages[last - 1].value);
      EvalSample s;
      s.id = row.id.empty() ? row.where() : row.id;
      s.question = message;
      s.reference = references.back();
      report.predictions.push_back(std::move(s));
    }
    auto encoded = pipeline.encode(media);
    std::vector<std::vector<const EncodedMedia*>> per_prompt;
    for (const auto& [first, n] : media_range) {
      per_prompt.emplace_back();
      for (size_t k = first; k < first + n; ++k) per_prompt.back().push_back(&encoded[k]);
    }
    auto spliced = pipeline.splice(prompts, per_prompt, Padding::Left);
    const auto outputs = generator.generate_from_embeddings(spliced.embeds, spliced.valid, spliced.padded_ids, sampling);
    for (const auto& o : outputs) predictions.push_back(o.text);
    if (progress) progress(static_cast<int64_t>(end), static_cast<int64_t>(rows.size()));
  }
  for (size_t i = 0; i < predictions.size(); ++i) {
    report.predictions[i].prediction = predictions[i];
    report.predictions[i].score = score_answer(report.task, predictions[i], references[i]);
  }
  report.samples = static_cast<int64_t>(references.size());
  report.metrics = metrics_of(report.task, predictions, references);
  // Chance: each sample answered with another sample's reference, drawn at random.
  std::mt19937_64 rng(options.seed);
  std::uniform_int_distribution<size_t> pick(0, references.size() - 1);
  for (int d = 0; d < kChanceDraws; ++d) {
    std::vector<std::string> drawn;
    for (size_t i = 0; i < references.size(); ++i) drawn.push_back(references[pick(rng)]);
    for (const auto& [k, v] : metrics_of(report.task, drawn, references)) report.chance[k] += v / kChanceDraws;
  }
  report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  return report;
}

}  // namespace lego::eval
