#include "answer.h"

#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#include <torch/torch.h>

#include <chrono>

#include "lego/sdk/error.h"
#include "lego/sdk/io/av_readers.h"
#include "lego/sdk/io/image_reader.h"

namespace lego::cli {

Answer answer(host::MultimodalModel& model, const std::string& text, const std::vector<host::EncodedMedia>& media,
              const generate::SamplingOptions& sampling, const generate::StreamCallback& stream) {
  Answer a;
  auto prompt = model.splice(text, media);
  a.prompt_ids = prompt.ids;
  generate::Generator generator(model.llm().net, model.llm().tokenizer);
  auto valid = torch::ones({1, prompt.embeds.size(1)}, torch::kBool);
  auto ids = torch::tensor(prompt.ids, torch::kInt64).unsqueeze(0);
  a.output = generator.generate_from_embeddings(prompt.embeds, valid, ids, sampling, stream, &a.timings).front();
  a.mentions = grounding::parse(a.output.text);
  return a;
}

nlohmann::json grounding_json(const grounding::Mentions& mentions, const std::vector<host::EncodedMedia>& media) {
  const Media* image = nullptr;
  const Media* timed = nullptr;
  for (const auto& e : media) {
    if (image == nullptr && e.modality == "image") image = &e.media;
    if (timed == nullptr && e.media.duration_s > 0) timed = &e.media;
  }
  auto boxes = nlohmann::json::array();
  for (const auto& m : mentions.boxes) {
    nlohmann::json b = {{"phrase", m.phrase}, {"box_square", {m.box.x1, m.box.y1, m.box.x2, m.box.y2}}};
    if (image != nullptr) {
      const auto rel = grounding::unpad_box(m.box, image->width, image->height);
      const auto px = grounding::to_pixels(rel, image->width, image->height);
      b["box"] = {rel.x1, rel.y1, rel.x2, rel.y2};
      b["box_px"] = {px.x1, px.y1, px.x2, px.y2};
    } else {
      b["box"] = {m.box.x1, m.box.y1, m.box.x2, m.box.y2};
      b["box_px"] = nullptr;
    }
    boxes.push_back(b);
  }
  auto spans = nlohmann::json::array();
  for (const auto& m : mentions.spans) {
    nlohmann::json s = {{"phrase", m.phrase}, {"span", {m.span.t1, m.span.t2}}};
    if (timed != nullptr) {
      s["seconds"] = {m.span.t1 * timed->duration_s, m.span.t2 * timed->duration_s};
    } else {
      s["seconds"] = nullptr;
    }
    spans.push_back(s);
  }
  return {{"boxes", boxes}, {"spans", spans}};
}

namespace {

void write_image(const cv::Mat& bgr, const std::filesystem::path& out) {
  bool ok = false;
  try {
    ok = cv::imwrite(out.string(), bgr);
  } catch (const cv::Exception& e) {
    throw Error(ErrorKind::Io, out.string() + ": cannot write: " + e.what());
  }
  if (!ok) throw Error(ErrorKind::Io, out.string() + ": cannot write (unknown image extension?)");
}

}  // namespace

void render_video_strip(const std::filesystem::path& video, const grounding::Mentions& mentions,
                        const std::filesystem::path& out, int64_t frames) {
  constexpr int kW = 192, kH = 108, kBorder = 4, kCaption = 22;
  const auto sampled = io::VideoReader::sample_uniform(video, frames, kW, kH);
  const int n = static_cast<int>(sampled.frames.size(0));
  cv::Mat strip(kH + 2 * kBorder + kCaption, n * (kW + 2 * kBorder), CV_8UC3, cv::Scalar(30, 30, 30));
  const double duration = std::max(sampled.info.duration_s, 1e-9);
  for (int i = 0; i < n; ++i) {
    auto frame = sampled.frames[i].contiguous();
    cv::Mat rgb(kH, kW, CV_8UC3, frame.data_ptr());
    cv::Mat bgr;
    cv::cvtColor(rgb, bgr, cv::COLOR_RGB2BGR);
    const double t = sampled.timestamps[i];
    const grounding::SpanMention* inside = nullptr;
    for (const auto& m : mentions.spans) {
      if (t >= m.span.t1 * duration && t <= m.span.t2 * duration) inside = &m;
    }
    const int x = i * (kW + 2 * kBorder);
    cv::rectangle(strip, cv::Rect(x, 0, kW + 2 * kBorder, kH + 2 * kBorder),
                  inside ? cv::Scalar(0, 0, 255) : cv::Scalar(90, 90, 90), cv::FILLED);
    bgr.copyTo(strip(cv::Rect(x + kBorder, kBorder, kW, kH)));
    char label[64];
    std::snprintf(label, sizeof label, "%.1fs", t);
    cv::putText(strip, label, cv::Point(x + kBorder, kH + 2 * kBorder + 16), cv::FONT_HERSHEY_SIMPLEX, 0.45,
                cv::Scalar(230, 230, 230), 1);
    if (inside != nullptr && !inside->phrase.empty()) {
      cv::putText(strip, inside->phrase.substr(0, 24), cv::Point(x + kBorder + 2, kBorder + 14), cv::FONT_HERSHEY_SIMPLEX,
                  0.4, cv::Scalar(0, 0, 255), 1);
    }
  }
  write_image(strip, out);
}

void render_boxes(const std::filesystem::path& image, const grounding::Mentions& mentions,
                  const std::filesystem::path& out) {
  const auto img = io::ImageReader::read(image);
  cv::Mat rgb(static_cast<int>(img.height), static_cast<int>(img.width), CV_8UC3, img.rgb.data_ptr());
  cv::Mat canvas;
  cv::cvtColor(rgb, canvas, cv::COLOR_RGB2BGR);
  static const cv::Scalar kColours[] = {{255, 0, 0}, {0, 0, 255}, {0, 200, 0}, {0, 200, 255}, {255, 0, 255}, {255, 255, 0}};
  const int thickness = std::max(2, static_cast<int>(std::max(img.width, img.height) / 300));
  for (size_t i = 0; i < mentions.boxes.size(); ++i) {
    const auto& m = mentions.boxes[i];
    const auto px = grounding::to_pixels(grounding::unpad_box(m.box, img.width, img.height), img.width, img.height);
    const auto& colour = kColours[i % std::size(kColours)];
    cv::rectangle(canvas, cv::Point(static_cast<int>(px.x1), static_cast<int>(px.y1)),
                  cv::Point(static_cast<int>(px.x2), static_cast<int>(px.y2)), colour, thickness);
    const double scale = std::max(0.4, static_cast<double>(std::max(img.width, img.height)) / 1000.0);
    std::string label = m.phrase;
    if (label.empty()) label.assign(1, '#').append(std::to_string(i));
    cv::putText(canvas, label,
                cv::Point(static_cast<int>(px.x1) + 2, std::max(12, static_cast<int>(px.y1) - 4)), cv::FONT_HERSHEY_SIMPLEX,
                scale, colour, std::max(1, thickness / 2));
  }
  write_image(canvas, out);
}

}  // namespace lego::cli
