#include "lego/sdk/io/image_reader.h"

#include <ATen/ATen.h>
#include <opencv2/core/utils/logger.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include <cstdlib>
#include <fstream>
#include <mutex>
#include <string>
#include <vector>

#include "lego/sdk/error.h"

namespace lego::io {
namespace {

void configure_opencv_once() {
  static std::once_flag once;
  std::call_once(once, [] {
    // OpenCV reads this once, at its first decode, and refuses larger headers before allocating.
    setenv("OPENCV_IO_MAX_IMAGE_PIXELS", std::to_string(ImageReader::kMaxPixels).c_str(), /*overwrite=*/0);
    cv::utils::logging::setLogLevel(cv::utils::logging::LOG_LEVEL_SILENT);
  });
}

// libjpeg decodes a truncated file "successfully", padding it with grey. A whole JPEG has its end-of-image
// marker after its last start-of-scan marker (0xFF is byte-stuffed inside scans, so neither appears there).
bool jpeg_is_truncated(const std::vector<uchar>& bytes) {
  if (bytes.size() < 4 || bytes[0] != 0xFF || bytes[1] != 0xD8) return false;
  size_t last_sos = 0;
  for (size_t i = 0; i + 1 < bytes.size(); ++i) {
    if (bytes[i] == 0xFF && bytes[i + 1] == 0xDA) last_sos = i;
  }
  for (size_t i = last_sos; i + 1 < bytes.size(); ++i) {
    if (bytes[i] == 0xFF && bytes[i + 1] == 0xD9) return false;
  }
  return true;
}

}  // namespace

const std::vector<std::string>& ImageReader::extensions() {
  static const std::vector<std::string> ext{"jpg", "jpeg", "png", "bmp", "webp", "tif", "tiff"};
  return ext;
}

Image ImageReader::read(const std::filesystem::path& file) {
  configure_opencv_once();
  std::error_code ec;
  if (!std::filesystem::exists(file, ec)) throw Error(ErrorKind::NotFound, file.string() + ": no such image");
  if (std::filesystem::is_directory(file, ec)) throw Error(ErrorKind::InvalidArgument, file.string() + ": is a directory");
  std::ifstream in(file, std::ios::binary);
  if (!in) throw Error(ErrorKind::Io, file.string() + ": cannot read");
  std::vector<uchar> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (bytes.empty()) throw Error(ErrorKind::Format, file.string() + ": empty file");
  if (jpeg_is_truncated(bytes)) throw Error(ErrorKind::Format, file.string() + ": truncated JPEG (no end-of-image marker)");
  cv::Mat bgr;
  try {
    // IMREAD_COLOR: 8-bit BGR whatever the source (grey, alpha, 16-bit, CMYK), EXIF orientation applied.
    bgr = cv::imdecode(bytes, cv::IMREAD_COLOR);
  } catch (const cv::Exception& e) {
    throw Error(ErrorKind::Format, file.string() + ": cannot decode: " + e.what());
  }
  if (bgr.empty() || bgr.cols <= 0 || bgr.rows <= 0) {
    throw Error(ErrorKind::Format, file.string() + ": not a decodable image (unknown format, corrupt, or over " +
                                       std::to_string(kMaxPixels) + " pixels)");
  }
  Image out;
  out.width = bgr.cols;
  out.height = bgr.rows;
  out.rgb = at::empty({out.height, out.width, 3}, at::kByte);
  cv::Mat rgb(bgr.rows, bgr.cols, CV_8UC3, out.rgb.data_ptr());
  cv::cvtColor(bgr, rgb, cv::COLOR_BGR2RGB);
  return out;
}

}  // namespace lego::io
