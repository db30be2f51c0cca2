#include "lego/sdk/io/render.h"

#include <unistd.h>

#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include <algorithm>
#include <cstdio>
#include <fstream>

#include "lego/sdk/error.h"
#include "lego/sdk/files.h"
#include "lego/sdk/io/av_readers.h"
#include "lego/sdk/io/image_reader.h"

namespace lego::io {
namespace {

// Encodes by the extension of `out`, then writes it atomically (temporary file, fsync, rename).
void write_image(const cv::Mat& bgr, const std::filesystem::path& out) {
  std::vector<uchar> bytes;
  bool ok = false;
  try {
    ok = cv::imencode(out.extension().string(), bgr, bytes);
  } catch (const cv::Exception&) {
    ok = false;  // OpenCV's message spans lines; ours names the file and the extension
  }
  if (!ok) {
    throw Error(ErrorKind::InvalidArgument, out.string() + ": cannot write an image with the extension '" +
                                                out.extension().string() + "' (use .png, .jpg, ...)");
  }
  AtomicFile file(out);  // a failed write leaves an existing file as it was, and is an error
  file.write(bytes.data(), bytes.size());
  file.commit();
}

}  // namespace

void write_rgb_image(const at::Tensor& rgb, const std::filesystem::path& out) {
  if (rgb.dim() != 3 || rgb.size(2) != 3 || rgb.scalar_type() != at::kByte) {
    throw Error(ErrorKind::InvalidArgument, out.string() + ": an image to write is [height, width, 3] uint8");
  }
  auto pixels = rgb.contiguous();
  cv::Mat view(static_cast<int>(pixels.size(0)), static_cast<int>(pixels.size(1)), CV_8UC3, pixels.data_ptr());
  cv::Mat bgr;
  cv::cvtColor(view, bgr, cv::COLOR_RGB2BGR);
  write_image(bgr, out);
}

void draw_boxes(const std::filesystem::path& image, const std::vector<LabelledBox>& boxes,
                const std::filesystem::path& out) {
  const auto img = ImageReader::read(image);
  cv::Mat rgb(static_cast<int>(img.height), static_cast<int>(img.width), CV_8UC3, img.rgb.data_ptr());
  cv::Mat canvas;
  cv::cvtColor(rgb, canvas, cv::COLOR_RGB2BGR);
  static const cv::Scalar kColours[] = {{255, 0, 0}, {0, 0, 255}, {0, 200, 0}, {0, 200, 255}, {255, 0, 255}, {255, 255, 0}};
  const int thickness = std::max(2, static_cast<int>(std::max(img.width, img.height) / 300));
  for (size_t i = 0; i < boxes.size(); ++i) {
    const auto& b = boxes[i];
    const auto& colour = kColours[i % std::size(kColours)];
    cv::rectangle(canvas, cv::Point(static_cast<int>(b.x1), static_cast<int>(b.y1)),
                  cv::Point(static_cast<int>(b.x2), static_cast<int>(b.y2)), colour, thickness);
    const double scale = std::max(0.4, static_cast<double>(std::max(img.width, img.height)) / 1000.0);
    std::string label = b.label;
    if (label.empty()) label.assign(1, '#').append(std::to_string(i));
    cv::putText(canvas, label, cv::Point(static_cast<int>(b.x1) + 2, std::max(12, static_cast<int>(b.y1) - 4)),
                cv::FONT_HERSHEY_SIMPLEX, scale, colour, std::max(1, thickness / 2));
  }
  write_image(canvas, out);
}

void draw_frame_strip(const std::filesystem::path& video, const std::vector<LabelledSpan>& spans,
                      const std::filesystem::path& out, int64_t frames) {
  constexpr int kW = 192, kH = 108, kBorder = 4, kCaption = 22;
  const auto sampled = VideoReader::sample_uniform(video, frames, kW, kH);
  const int n = static_cast<int>(sampled.frames.size(0));
  cv::Mat strip(kH + 2 * kBorder + kCaption, n * (kW + 2 * kBorder), CV_8UC3, cv::Scalar(30, 30, 30));
  for (int i = 0; i < n; ++i) {
    auto frame = sampled.frames[i].contiguous();
    cv::Mat rgb(kH, kW, CV_8UC3, frame.data_ptr());
    cv::Mat bgr;
    cv::cvtColor(rgb, bgr, cv::COLOR_RGB2BGR);
    const double t = sampled.timestamps[i];
    const LabelledSpan* inside = nullptr;
    for (const auto& s : spans) {
      if (t >= s.start_s && t <= s.end_s) inside = &s;
    }
    const int x = i * (kW + 2 * kBorder);
    cv::rectangle(strip, cv::Rect(x, 0, kW + 2 * kBorder, kH + 2 * kBorder),
                  inside ? cv::Scalar(0, 0, 255) : cv::Scalar(90, 90, 90), cv::FILLED);
    bgr.copyTo(strip(cv::Rect(x + kBorder, kBorder, kW, kH)));
    char label[64];
    std::snprintf(label, sizeof label, "%.1fs", t);
    cv::putText(strip, label, cv::Point(x + kBorder, kH + 2 * kBorder + 16), cv::FONT_HERSHEY_SIMPLEX, 0.45,
                cv::Scalar(230, 230, 230), 1);
    if (inside != nullptr && !inside->label.empty()) {
      cv::putText(strip, inside->label.substr(0, 24), cv::Point(x + kBorder + 2, kBorder + 14), cv::FONT_HERSHEY_SIMPLEX,
                  0.4, cv::Scalar(0, 0, 255), 1);
    }
  }
  write_image(strip, out);
}

}  // namespace lego::io
