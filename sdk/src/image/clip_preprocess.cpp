#include "lego/sdk/image/clip_preprocess.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <string>

#include "lego/sdk/error.h"
#include "lego/sdk/image/resample.h"
#include "lego/sdk/io/image_reader.h"

namespace lego::image {

std::array<uint8_t, 3> pad_colour(const ClipPreprocessOptions& o) {
  return {static_cast<uint8_t>(o.mean[0] * 255), static_cast<uint8_t>(o.mean[1] * 255),
          static_cast<uint8_t>(o.mean[2] * 255)};
}

at::Tensor clip_preprocess(const io::Image& image, const ClipPreprocessOptions& o) {
  // LLaVA's expand2square places the image in the middle of a square of the mean colour; the square is
  // never built: the resize reads the fill where the canvas has no image.
  Canvas canvas{image.width, image.height, 0, 0, pad_colour(o)};
  if (o.pad_to_square && image.height != image.width) {
    const int64_t side = std::max(image.height, image.width);
    canvas.width = canvas.height = side;
    canvas.left = (side - image.width) / 2;
    canvas.top = (side - image.height) / 2;
  }
  // Shortest edge to `size`, the other scaled as HF does (int truncation), then HF's centre crop.
  const int64_t h = canvas.height, w = canvas.width;
  ResizeWindow window;
  window.height = h <= w ? o.size : static_cast<int64_t>(static_cast<double>(o.size) * static_cast<double>(h) / static_cast<double>(w));
  window.width = w <= h ? o.size : static_cast<int64_t>(static_cast<double>(o.size) * static_cast<double>(w) / static_cast<double>(h));
  window.top = (window.height - o.size) / 2;
  window.left = (window.width - o.size) / 2;
  window.rows = window.cols = o.size;
  const auto crop = resize_bicubic_pil(image.rgb, canvas, window).permute({2, 0, 1});  // [3, size, size]
  auto mean = at::tensor({o.mean[0], o.mean[1], o.mean[2]}, at::kFloat).view({3, 1, 1});
  auto std = at::tensor({o.std[0], o.std[1], o.std[2]}, at::kFloat).view({3, 1, 1});
  return ((crop.to(at::kFloat) / 255.0 - mean) / std).contiguous();
}

}  // namespace lego::image
