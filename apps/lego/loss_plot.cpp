#include "loss_plot.h"

#include <nlohmann/json.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <map>
#include <vector>

#include "lego/sdk/files.h"

namespace lego::cli {

void write_loss_plot(const std::filesystem::path& metrics, const std::filesystem::path& out) {
  std::ifstream in(metrics);
  std::map<std::string, std::vector<cv::Point2d>> series;
  std::string line;
  while (std::getline(in, line)) {
    try {
      const auto j = nlohmann::json::parse(line);
      const double loss = j.at("loss").get<double>();
      if (std::isfinite(loss)) series[j.at("stage").get<std::string>()].emplace_back(j.at("step").get<double>(), loss);
    } catch (const std::exception&) {
    }
  }
  size_t points = 0;
  double x_max = 1, y_min = 1e300, y_max = -1e300;
  for (const auto& [name, pts] : series) {
    points += pts.size();
    for (const auto& p : pts) {
      x_max = std::max(x_max, p.x);
      y_min = std::min(y_min, p.y);
      y_max = std::max(y_max, p.y);
    }
  }
  if (points < 2) return;
  if (y_max - y_min < 1e-9) y_max = y_min + 1;
  const int w = 800, h = 480, left = 70, right = 20, top = 30, bottom = 50;
  cv::Mat img(h, w, CV_8UC3, cv::Scalar(255, 255, 255));
  cv::rectangle(img, {left, top}, {w - right, h - bottom}, cv::Scalar(0, 0, 0), 1);
  auto to_px = [&](const cv::Point2d& p) {
    return cv::Point(left + static_cast<int>((p.x / x_max) * (w - left - right)),
                     h - bottom - static_cast<int>((p.y - y_min) / (y_max - y_min) * (h - top - bottom)));
  };
  const std::vector<cv::Scalar> colours = {{200, 80, 30}, {40, 40, 200}, {40, 160, 40}, {160, 40, 160}};
  int k = 0;
  for (const auto& [name, pts] : series) {
    const auto& c = colours[static_cast<size_t>(k) % colours.size()];
    for (size_t i = 1; i < pts.size(); ++i) cv::line(img, to_px(pts[i - 1]), to_px(pts[i]), c, 2, cv::LINE_AA);
    cv::putText(img, name, {w - right - 200, top + 20 + 20 * k}, cv::FONT_HERSHEY_SIMPLEX, 0.5, c, 1, cv::LINE_AA);
    ++k;
  }
  char label[64];
  std::snprintf(label, sizeof(label), "loss %.3f", y_max);
  cv::putText(img, label, {5, top + 5}, cv::FONT_HERSHEY_SIMPLEX, 0.4, {0, 0, 0}, 1, cv::LINE_AA);
  std::snprintf(label, sizeof(label), "%.3f", y_min);
  cv::putText(img, label, {5, h - bottom}, cv::FONT_HERSHEY_SIMPLEX, 0.4, {0, 0, 0}, 1, cv::LINE_AA);
  std::snprintf(label, sizeof(label), "step %.0f", x_max);
  cv::putText(img, label, {w - right - 90, h - bottom + 20}, cv::FONT_HERSHEY_SIMPLEX, 0.4, {0, 0, 0}, 1, cv::LINE_AA);
  std::vector<unsigned char> png;
  cv::imencode(".png", img, png);
  write_file_atomically(out, std::string(png.begin(), png.end()));
}

}  // namespace lego::cli
