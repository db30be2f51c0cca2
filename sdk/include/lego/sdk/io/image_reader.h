// ImageReader: image files -> RGB pixels on OpenCV (DESIGN.md, sdk/io).
//
// Reads jpg, png (8/16-bit, alpha dropped), bmp, webp, tiff, grayscale and CMYK files, applying EXIF
// orientation. Dimensions are read from the header by lego itself and checked against a pixel budget
// before the decoder allocates anything; only those five formats are read. Anything that is not a whole, decodable image is refused with lego::Error naming the file.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <filesystem>

namespace lego::io {

struct Image {
  at::Tensor rgb;  // [H, W, 3] uint8, CPU
  int64_t width = 0;
  int64_t height = 0;
};

class ImageReader {
 public:
  // Largest image accepted, in pixels (16384 x 16384), checked from the file's header before decoding.
  static constexpr int64_t kMaxPixels = int64_t{1} << 28;
  // Largest image file read (1 GiB).
  static constexpr uint64_t kMaxFileBytes = uint64_t{1} << 30;

  static Image read(const std::filesystem::path& file);
  // Lower-case extensions read() accepts.
  static const std::vector<std::string>& extensions();
};

}  // namespace lego::io
