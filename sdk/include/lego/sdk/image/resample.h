// PIL's Image.resize(..., BICUBIC) of 8-bit RGB, bit for bit (the released preprocessing runs it through
// CLIPImageProcessor), computed for an image lying on a larger canvas of one colour without building the
// canvas (LLaVA's expand2square), and for only the part of the output that is kept (the centre crop).
#pragma once

#include <ATen/core/Tensor.h>

#include <array>
#include <cstdint>

namespace lego::image {

// Where the image lies: a canvas of width x height, the image's top-left corner at (left, top), every
// canvas pixel outside the image `fill`. An image without padding is the canvas {w, h, 0, 0}.
struct Canvas {
  int64_t width = 0, height = 0;
  int64_t left = 0, top = 0;
  std::array<uint8_t, 3> fill{0, 0, 0};
};

// The resized canvas is width x height; the part computed starts at (left, top) and is cols x rows.
struct ResizeWindow {
  int64_t width = 0, height = 0;
  int64_t left = 0, top = 0, cols = 0, rows = 0;
};

// The largest canvas side accepted: the weights' memory and time grow with it (about 4 per canvas pixel
// of a side). The resized size may be larger (up to 2^31 - 1, PIL's limit): only the window is computed.
inline constexpr int64_t kMaxResizeSide = int64_t{1} << 20;

// `rgb` [h, w, 3] uint8 placed on `canvas`, resized to `window`'s size with PIL's antialiased bicubic
// (two passes, horizontal first, 22-bit fixed-point weights, rounded to 8 bits after each), returns the
// window's pixels [rows, cols, 3] uint8. Memory is the window's plus the weights; time grows with the
// image's pixels and the window, not with the canvas's area. Bad geometry is an InvalidArgument error.
at::Tensor resize_bicubic_pil(const at::Tensor& rgb, const Canvas& canvas, const ResizeWindow& window);

}  // namespace lego::image
