#include "lego/sdk/image/resample.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "lego/sdk/error.h"

namespace lego::image {
namespace {

// PIL keeps 8-bit weights in 32 - 8 - 2 bits of fraction: room for the sign and for sums above 1.
constexpr int kPrecisionBits = 22;
constexpr int64_t kHalf = int64_t{1} << (kPrecisionBits - 1);

double bicubic(double x) {  // Keys' cubic convolution with a = -0.5, support 2
  constexpr double a = -0.5;
  x = std::fabs(x);
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
  if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
  return 0.0;
}

uint8_t clip8(int64_t sum) {
  const int64_t v = sum >> kPrecisionBits;  // arithmetic shift: rounds towards -inf as PIL's does
  return static_cast<uint8_t>(std::clamp<int64_t>(v, 0, 255));
}

// The weights of one output index along one axis: taps[i] applies to input index first + i.
struct Taps {
  int64_t first = 0;
  std::vector<int32_t> taps;
  int64_t total = 0;  // sum of taps
  // The sub-range [lo, hi) of input indices that are image, not fill (lo == hi: none), and its weight.
  int64_t lo = 0, hi = 0, image_weight = 0;
};

// Output indices [from, from + count) of an axis resized from in_size to out_size, as PIL's
// precompute_coeffs and normalize_coeffs_8bpc make them. Without a resize PIL skips the pass; weight
// 1 << 22 on the same index gives the same values.
std::vector<Taps> axis_taps(int64_t in_size, int64_t out_size, int64_t from, int64_t count, int64_t image_lo,
                            int64_t image_hi) {
  std::vector<Taps> out(static_cast<size_t>(count));
  // PIL's box edges are floats; (in1 - in0) is computed in float before the division.
  const double scale = static_cast<double>(static_cast<float>(in_size) - 0.0f) / static_cast<double>(out_size);
  const double filterscale = std::max(scale, 1.0);
  const double support = 2.0 * filterscale;
  std::vector<double> w;
  for (int64_t i = 0; i < count; ++i) {
    const int64_t xx = from + i;
    auto& t = out[static_cast<size_t>(i)];
    if (in_size == out_size) {
      t.first = xx;
      t.taps = {int32_t{1} << kPrecisionBits};
    } else {
      const double center = 0.0 + (static_cast<double>(xx) + 0.5) * scale;
      const double ss = 1.0 / filterscale;
      auto xmin = static_cast<int64_t>(center - support + 0.5);  // truncation, as C's (int)
      if (xmin < 0) xmin = 0;
      auto xmax = static_cast<int64_t>(center + support + 0.5);
      if (xmax > in_size) xmax = in_size;
      xmax -= xmin;
      w.assign(static_cast<size_t>(std::max<int64_t>(xmax, 0)), 0.0);
      double ww = 0.0;
      for (int64_t x = 0; x < xmax; ++x) {
        const double k = bicubic((static_cast<double>(x + xmin) - center + 0.5) * ss);
        w[static_cast<size_t>(x)] = k;
        ww += k;
      }
      t.first = xmin;
      t.taps.resize(w.size());
      for (size_t x = 0; x < w.size(); ++x) {
        const double k = ww != 0.0 ? w[x] / ww : w[x];
        const double scaled = k * static_cast<double>(int64_t{1} << kPrecisionBits);
        t.taps[x] = static_cast<int32_t>(k < 0 ? -0.5 + scaled : 0.5 + scaled);  // truncation, as C's (int)
      }
    }
    const int64_t end = t.first + static_cast<int64_t>(t.taps.size());
    t.lo = std::clamp(image_lo, t.first, end);
    t.hi = std::clamp(image_hi, t.lo, end);
    for (size_t x = 0; x < t.taps.size(); ++x) {
      const int64_t at = t.first + static_cast<int64_t>(x);
      t.total += t.taps[x];
      if (at >= t.lo && at < t.hi) t.image_weight += t.taps[x];
    }
  }
  return out;
}

// The horizontal pass of one image row (`line`, interleaved RGB) for output columns [x0, x1): each reads
// image columns t.lo .. t.hi (canvas coordinates; `left` is the image's) and the fill elsewhere.
void horizontal_pass(const uint8_t* line, int64_t left, const Taps* cols, size_t x0, size_t x1,
                     const std::array<uint8_t, 3>& fill, uint8_t* out) {
  for (size_t x = x0; x < x1; ++x) {
    const Taps& t = cols[x];
    const uint8_t* p = line + (t.lo - left) * 3;
    const int32_t* k = t.taps.data() + (t.lo - t.first);
    // 32-bit products and partial sums, as PIL's: |weights| sum to under 1.5, so 255 x 1.5 x 2^22 fits.
    int32_t s0 = 0, s1 = 0, s2 = 0;
    for (int64_t i = 0, n = t.hi - t.lo; i < n; ++i, p += 3) {
      s0 += int32_t{p[0]} * k[i];
      s1 += int32_t{p[1]} * k[i];
      s2 += int32_t{p[2]} * k[i];
    }
    const int64_t fill_weight = t.total - t.image_weight;
    out[x * 3 + 0] = clip8(kHalf + int64_t{fill[0]} * fill_weight + s0);
    out[x * 3 + 1] = clip8(kHalf + int64_t{fill[1]} * fill_weight + s1);
    out[x * 3 + 2] = clip8(kHalf + int64_t{fill[2]} * fill_weight + s2);
  }
}

void check_geometry(const at::Tensor& rgb, const Canvas& c, const ResizeWindow& win) {
  const auto fail = [](const std::string& what) { throw Error(ErrorKind::InvalidArgument, "resize: " + what); };
  if (rgb.dim() != 3 || rgb.size(2) != 3 || rgb.scalar_type() != at::kByte) fail("expects an [h, w, 3] uint8 image");
  const int64_t h = rgb.size(0), w = rgb.size(1);
  if (h <= 0 || w <= 0) fail("empty image");
  for (const int64_t side : {c.width, c.height}) {
    if (side <= 0 || side > kMaxResizeSide) {
      fail("a side of " + std::to_string(side) + " pixels (the canvas " + std::to_string(c.width) + " x " +
           std::to_string(c.height) + ", resized to " + std::to_string(win.width) + " x " + std::to_string(win.height) +
           "); sides from 1 to " + std::to_string(kMaxResizeSide) + " are supported");
    }
  }
  // PIL's sizes are C ints; only the window's pixels are computed, so a huge resized side costs nothing.
  if (win.width <= 0 || win.height <= 0 || win.width > INT32_MAX || win.height > INT32_MAX) {
    fail("resized to " + std::to_string(win.width) + " x " + std::to_string(win.height) + " pixels");
  }
  if (c.left < 0 || c.top < 0 || c.left + w > c.width || c.top + h > c.height) fail("the image does not lie on its canvas");
  if (win.left < 0 || win.top < 0 || win.cols <= 0 || win.rows <= 0 || win.left + win.cols > win.width ||
      win.top + win.rows > win.height) {
    fail("the window is not inside the resized image");
  }
}

}  // namespace

at::Tensor resize_bicubic_pil(const at::Tensor& image, const Canvas& canvas, const ResizeWindow& window) {
  check_geometry(image, canvas, window);
  const at::Tensor rgb = image.contiguous();
  const int64_t h = rgb.size(0), w = rgb.size(1);
  const auto cols = axis_taps(canvas.width, window.width, window.left, window.cols, canvas.left, canvas.left + w);
  const auto rows = axis_taps(canvas.height, window.height, window.top, window.rows, canvas.top, canvas.top + h);
  const auto n_cols = static_cast<size_t>(window.cols);
  const auto n_rows = static_cast<size_t>(window.rows);

  // The horizontal pass of a row of fill, per output column: PIL's sum with every pixel the fill.
  std::vector<uint8_t> fill_row(n_cols * 3);
  for (size_t x = 0; x < n_cols; ++x) {
    for (int c = 0; c < 3; ++c) fill_row[x * 3 + c] = clip8(kHalf + int64_t{canvas.fill[c]} * cols[x].total);
  }
  // Sums of the vertical pass. Rows of fill, and columns whose window holds no image pixel, contribute
  // the fill row's value times their total weight; only image rows x image columns are summed one by one.
  std::vector<int64_t> acc(n_rows * n_cols * 3, kHalf);
  for (size_t y = 0; y < n_rows; ++y) {
    const int64_t fill_weight = rows[y].total - rows[y].image_weight;
    for (size_t x = 0; x < n_cols; ++x) {
      const int64_t weight = cols[x].lo < cols[x].hi ? fill_weight : rows[y].total;
      for (int c = 0; c < 3; ++c) acc[(y * n_cols + x) * 3 + c] += int64_t{fill_row[x * 3 + c]} * weight;
    }
  }
  // Image columns [x0, x1) of the window and image rows [y0, y1) of the canvas that the window reads.
  size_t x0 = 0, x1 = n_cols;
  while (x0 < n_cols && cols[x0].lo == cols[x0].hi) ++x0;
  while (x1 > x0 && cols[x1 - 1].lo == cols[x1 - 1].hi) --x1;
  int64_t y0 = canvas.top + h, y1 = canvas.top;
  for (const auto& r : rows) {
    if (r.lo < r.hi) {
      y0 = std::min(y0, r.lo);
      y1 = std::max(y1, r.hi);
    }
  }
  const auto* px = rgb.data_ptr<uint8_t>();
  std::vector<uint8_t> hrow(n_cols * 3);
  size_t first_row = 0;  // the first output row whose window has not ended before y
  for (int64_t y = y0; y < y1 && x0 < x1; ++y) {
    horizontal_pass(px + (y - canvas.top) * w * 3, canvas.left, cols.data(), x0, x1, canvas.fill, hrow.data());
    // Into every output row whose window holds y (windows move forward with the output row).
    while (first_row < n_rows && rows[first_row].hi <= y) ++first_row;
    for (size_t r = first_row; r < n_rows && rows[r].lo <= y; ++r) {
      const int32_t k = rows[r].taps[static_cast<size_t>(y - rows[r].first)];
      int64_t* a = acc.data() + r * n_cols * 3;
      for (size_t i = x0 * 3; i < x1 * 3; ++i) a[i] += int32_t{hrow[i]} * k;
    }
  }
  auto out = at::empty({window.rows, window.cols, 3}, at::kByte);
  auto* o = out.data_ptr<uint8_t>();
  for (size_t i = 0; i < acc.size(); ++i) o[i] = clip8(acc[i]);
  return out;
}

}  // namespace lego::image
