#include "lego/sdk/io/image_reader.h"

#include <ATen/ATen.h>
#include <opencv2/core/utils/logger.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <fstream>
#include <mutex>
#include <string>
#include <vector>

#include "lego/sdk/error.h"
#include "lego/sdk/stderr_capture.h"
#include "lego/sdk/files.h"

namespace lego::io {
namespace {

void configure_opencv_once() {
  static std::once_flag once;
  std::call_once(once, [] { cv::utils::logging::setLogLevel(cv::utils::logging::LOG_LEVEL_SILENT); });
}

uint32_t be16(const std::vector<uchar>& b, size_t i) { return (uint32_t{b[i]} << 8) | b[i + 1]; }
uint32_t be32(const std::vector<uchar>& b, size_t i) { return (be16(b, i) << 16) | be16(b, i + 2); }
uint32_t le16(const std::vector<uchar>& b, size_t i) { return uint32_t{b[i]} | (uint32_t{b[i + 1]} << 8); }
uint32_t le24(const std::vector<uchar>& b, size_t i) { return le16(b, i) | (uint32_t{b[i + 2]} << 16); }
uint32_t le32(const std::vector<uchar>& b, size_t i) { return le16(b, i) | (le16(b, i + 2) << 16); }

struct Dimensions {
  int64_t width = 0;
  int64_t height = 0;
};

std::optional<Dimensions> jpeg_dimensions(const std::vector<uchar>& b) {
  size_t i = 2;
  while (i + 9 <= b.size()) {
    if (b[i] != 0xFF) return std::nullopt;
    while (i + 1 < b.size() && b[i + 1] == 0xFF) ++i;  // fill bytes
    if (i + 9 > b.size()) return std::nullopt;
    const uint8_t m = b[i + 1];
    if (m == 0x01 || (m >= 0xD0 && m <= 0xD8)) {  // markers without a length
      i += 2;
      continue;
    }
    const bool sof = m >= 0xC0 && m <= 0xCF && m != 0xC4 && m != 0xC8 && m != 0xCC;
    if (sof) return Dimensions{be16(b, i + 7), be16(b, i + 5)};
    if (m == 0xD9 || m == 0xDA) return std::nullopt;  // image data before any frame header
    i += 2 + be16(b, i + 2);
  }
  return std::nullopt;
}

std::optional<Dimensions> tiff_dimensions(const std::vector<uchar>& b) {
  const bool le = b[0] == 'I';
  auto u16 = [&](size_t i) { return le ? le16(b, i) : be16(b, i); };
  auto u32 = [&](size_t i) { return le ? le32(b, i) : be32(b, i); };
  if (u16(2) != 42) return std::nullopt;  // BigTIFF (43) and others
  const size_t ifd = u32(4);
  if (ifd + 2 > b.size()) return std::nullopt;
  const size_t entries = u16(ifd);
  Dimensions d;
  for (size_t e = 0; e < entries && ifd + 2 + 12 * (e + 1) <= b.size(); ++e) {
    const size_t at = ifd + 2 + 12 * e;
    const uint32_t tag = u16(at), type = u16(at + 2);
    const int64_t value = type == 3 ? u16(at + 8) : type == 4 ? u32(at + 8) : -1;
    if (tag == 256) d.width = value;
    if (tag == 257) d.height = value;
  }
  if (d.width <= 0 || d.height <= 0) return std::nullopt;
  return d;
}

// Width and height from the header of a format lego reads (PNG, JPEG, BMP, WebP, TIFF), before any pixel
// is decoded; nullopt for anything else.
std::optional<Dimensions> header_dimensions(const std::vector<uchar>& b) {
  auto starts = [&](const char* magic, size_t n, size_t at = 0) {
    return b.size() >= at + n && std::equal(magic, magic + n, b.begin() + static_cast<std::ptrdiff_t>(at),
                                           [](char m, uchar c) { return static_cast<uchar>(m) == c; });
  };
  if (starts("\x89PNG\r\n\x1a\n", 8) && b.size() >= 24 && starts("IHDR", 4, 12)) {
    return Dimensions{be32(b, 16), be32(b, 20)};
  }
  if (starts("\xFF\xD8", 2)) return jpeg_dimensions(b);
  if (starts("BM", 2) && b.size() >= 26) {
    if (le32(b, 14) == 12) return Dimensions{le16(b, 18), le16(b, 20)};
    const auto h = static_cast<int32_t>(le32(b, 22));
    return Dimensions{static_cast<int32_t>(le32(b, 18)), h < 0 ? -int64_t{h} : h};
  }
  if (starts("RIFF", 4) && starts("WEBP", 4, 8) && b.size() >= 30) {
    if (starts("VP8 ", 4, 12)) return Dimensions{le16(b, 26) & 0x3FFF, le16(b, 28) & 0x3FFF};
    if (starts("VP8L", 4, 12) && b[20] == 0x2F) {
      const uint32_t bits = le32(b, 21);
      return Dimensions{1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)};
    }
    if (starts("VP8X", 4, 12)) return Dimensions{1 + int64_t{le24(b, 24)}, 1 + int64_t{le24(b, 27)}};
    return std::nullopt;
  }
  if ((starts("II", 2) || starts("MM", 2)) && b.size() >= 8) return tiff_dimensions(b);
  return std::nullopt;
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
  const uint64_t size = require_regular_file(file, "image");
  if (size > kMaxFileBytes) {
    throw Error(ErrorKind::InvalidArgument, file.string() + ": image file of " + std::to_string(size) +
                                                " bytes, over the " + std::to_string(kMaxFileBytes) + "-byte limit");
  }
  std::ifstream in(file, std::ios::binary);
  if (!in) throw Error(ErrorKind::Io, file.string() + ": cannot read");
  std::vector<uchar> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (bytes.empty()) throw Error(ErrorKind::Format, file.string() + ": empty file");
  // The pixel budget, from the header, before the decoder allocates anything (OpenCV's own limit, 2^30
  // pixels, is fixed when it loads and far larger).
  const auto dims = header_dimensions(bytes);
  if (!dims) {
    throw Error(ErrorKind::Format, file.string() + ": not a PNG, JPEG, BMP, WebP or TIFF image (or its header is cut)");
  }
  if (dims->width <= 0 || dims->height <= 0) {
    throw Error(ErrorKind::Format, file.string() + ": image header gives a zero width or height");
  }
  if (dims->width > kMaxPixels / dims->height) {
    throw Error(ErrorKind::Format, file.string() + ": image of " + std::to_string(dims->width) + " x " +
                                                std::to_string(dims->height) + " pixels, over the budget of " +
                                                std::to_string(kMaxPixels) + " pixels");
  }
  if (jpeg_is_truncated(bytes)) throw Error(ErrorKind::Format, file.string() + ": truncated JPEG (no end-of-image marker)");
  cv::Mat bgr;
  std::string decoder_error;
  // libjpeg and libpng print their warnings and errors to stderr: they become part of ours, or, where
  // the image still decodes (as PIL decodes it for the release), are dropped.
  const std::string printed = capture_stderr([&] {
    try {
      // IMREAD_COLOR: 8-bit BGR whatever the source (grey, alpha, 16-bit, CMYK), EXIF orientation applied.
      bgr = cv::imdecode(bytes, cv::IMREAD_COLOR);
    } catch (const cv::Exception& e) {
      decoder_error = e.what();
    }
  });
  if (!decoder_error.empty() || bgr.empty() || bgr.cols <= 0 || bgr.rows <= 0) {
    std::string why = decoder_error.empty() ? printed : decoder_error;
    throw Error(ErrorKind::Format, file.string() + ": not a decodable image (corrupt)" + (why.empty() ? "" : ": " + why));
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
