#include "lego/sdk/image/clip_preprocess.h"

#include <ATen/ATen.h>

#include <cmath>

namespace lego::image {

std::array<uint8_t, 3> pad_colour(const ClipPreprocessOptions& o) {
  return {static_cast<uint8_t>(o.mean[0] * 255), static_cast<uint8_t>(o.mean[1] * 255),
          static_cast<uint8_t>(o.mean[2] * 255)};
}

at::Tensor clip_preprocess(const io::Image& image, const ClipPreprocessOptions& o) {
  at::Tensor rgb = image.rgb;
  int64_t h = image.height, w = image.width;
  if (o.pad_to_square && h != w) {
    const int64_t side = std::max(h, w);
    const auto fill = pad_colour(o);
    auto square = at::empty({side, side, 3}, at::kByte);
    for (int c = 0; c < 3; ++c) square.select(2, c).fill_(fill[c]);
    square.narrow(0, (side - h) / 2, h).narrow(1, (side - w) / 2, w).copy_(rgb);
    rgb = square;
    h = w = side;
  }
  // Shortest edge to `size`, the other scaled as HF does (int truncation).
  const int64_t out_h = h <= w ? o.size : static_cast<int64_t>(static_cast<double>(o.size) * h / w);
  const int64_t out_w = w <= h ? o.size : static_cast<int64_t>(static_cast<double>(o.size) * w / h);
  auto chw = rgb.permute({2, 0, 1}).unsqueeze(0).contiguous();  // [1, 3, H, W] uint8
  at::Tensor resized = chw;
  if (out_h != h || out_w != w) {
    // Antialiased bicubic (a = -0.5) on uint8 with rounding: PIL's Image.resize(BICUBIC).
    resized = at::_upsample_bicubic2d_aa(chw, {out_h, out_w}, /*align_corners=*/false);
  }
  const int64_t top = (out_h - o.size) / 2;
  const int64_t left = (out_w - o.size) / 2;
  auto crop = resized.narrow(2, top, o.size).narrow(3, left, o.size).squeeze(0);
  auto mean = at::tensor({o.mean[0], o.mean[1], o.mean[2]}, at::kFloat).view({3, 1, 1});
  auto std = at::tensor({o.std[0], o.std[1], o.std[2]}, at::kFloat).view({3, 1, 1});
  return (crop.to(at::kFloat) / 255.0 - mean) / std;
}

}  // namespace lego::image
