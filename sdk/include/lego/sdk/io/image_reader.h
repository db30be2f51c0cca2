// ImageReader: image files -> RGB pixels on OpenCV (DESIGN.md, sdk/io).
//
// Reads jpg, png (8/16-bit, alpha dropped), bmp, webp, tiff, grayscale and CMYK files, applying EXIF
// orientation. Dimensions are checked against a pixel budget from the header, before pixels are
// allocated. Anything that is not a whole, decodable image is refused with lego::Error naming the file.
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
  // Largest image accepted, in pixels (16384 x 16384). OPENCV_IO_MAX_IMAGE_PIXELS, when set, wins.
  static constexpr int64_t kMaxPixels = int64_t{1} << 28;

  static Image read(const std::filesystem::path& file);
  // Lower-case extensions read() accepts.
  static const std::vector<std::string>& extensions();
};

}  // namespace lego::io
