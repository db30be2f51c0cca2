#include "lego/sdk/image/clip_preprocess.h"

#include <ATen/ATen.h>

#include <cmath>
#include <string>

#include "lego/sdk/error.h"
#include "lego/sdk/io/image_reader.h"

namespace lego::image {

std::array<uint8_t, 3> pad_colour(const ClipPreprocessOptions& o) {
  return {static_cast<uint8_t>(o.mean[0] * 255), static_cast<uint8_t>(o.mean[1] * 255),
          static_cast<uint8_t>(o.mean[2] * 255)};
}

at::Tensor clip_preprocess(const io::Image& image, const ClipPreprocessOptions& o) {
  // Everything stays channels-last (HWC) until the end: padding is then whole rows or columns, and
  // libtorch's uint8 antialiased resize has its fast path for that layout.
  at::Tensor rgb = image.rgb;
  int64_t h = image.height, w = image.width;
  if (o.pad_to_square && h != w) {
    const int64_t side = std::max(h, w);
    // The square is materialised (the antialiased resize needs it whole): it gets the reader's budget.
    if (side > io::ImageReader::kMaxPixels / side) {
      throw Error(ErrorKind::InvalidArgument,
                  "image of " + std::to_string(w) + " x " + std::to_string(h) + " pixels: padding it to a square of side " +
                      std::to_string(side) + " would pass the budget of " + std::to_string(io::ImageReader::kMaxPixels) +
                      " pixels (aspect ratio too extreme)");
    }
    const auto fill = pad_colour(o);
    const auto colour = at::tensor({fill[0], fill[1], fill[2]}, at::kByte).view({1, 1, 3});
    auto square = at::empty({side, side, 3}, at::kByte);
    if (w < h) {  // pad left and right
      const int64_t left = (side - w) / 2;
      square.narrow(1, 0, left).copy_(colour.expand({side, left, 3}));
      square.narrow(1, left + w, side - left - w).copy_(colour.expand({side, side - left - w, 3}));
      square.narrow(1, left, w).copy_(rgb);
    } else {  // pad top and bottom
      const int64_t top = (side - h) / 2;
      square.narrow(0, 0, top).copy_(colour.expand({top, side, 3}));
      square.narrow(0, top + h, side - top - h).copy_(colour.expand({side - top - h, side, 3}));
      square.narrow(0, top, h).copy_(rgb);
    }
    rgb = square;
    h = w = side;
  }
  // Shortest edge to `size`, the other scaled as HF does (int truncation).
  const int64_t out_h = h <= w ? o.size : static_cast<int64_t>(static_cast<double>(o.size) * h / w);
  const int64_t out_w = w <= h ? o.size : static_cast<int64_t>(static_cast<double>(o.size) * w / h);
  auto nhwc = rgb.unsqueeze(0).permute({0, 3, 1, 2});  // [1, 3, H, W] view, channels-last in memory
  at::Tensor resized = nhwc;
  if (out_h != h || out_w != w) {
    // Antialiased bicubic (a = -0.5) on uint8 with rounding: PIL's Image.resize(BICUBIC).
    resized = at::_upsample_bicubic2d_aa(nhwc, {out_h, out_w}, /*align_corners=*/false);
  }
  const int64_t top = (out_h - o.size) / 2;
  const int64_t left = (out_w - o.size) / 2;
  auto crop = resized.narrow(2, top, o.size).narrow(3, left, o.size).squeeze(0);
  auto mean = at::tensor({o.mean[0], o.mean[1], o.mean[2]}, at::kFloat).view({3, 1, 1});
  auto std = at::tensor({o.std[0], o.std[1], o.std[2]}, at::kFloat).view({3, 1, 1});
  return ((crop.to(at::kFloat) / 255.0 - mean) / std).contiguous();
}

}  // namespace lego::image
