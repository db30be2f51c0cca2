// Drawing answers onto media, for `lego infer --render` (DESIGN.md, sdk/io): boxes with their phrases on
// an image, and a strip of sampled video frames with the answer's spans marked. Plugins call these from
// Modality::render with boxes and spans already mapped onto their media. The file is written to a
// temporary name and renamed, so a failed write leaves nothing half-written.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace lego::io {

struct LabelledBox {
  std::string label;
  double x1 = 0, y1 = 0, x2 = 0, y2 = 0;  // pixels of the original image
};

struct LabelledSpan {
  std::string label;
  double start_s = 0, end_s = 0;
};

// Writes `rgb` ([height, width, 3] uint8) as an image file by the extension of `out` (PNG, JPEG, ...).
void write_rgb_image(const at::Tensor& rgb, const std::filesystem::path& out);

// Draws `boxes` on the image `image` and writes `out` (PNG, JPEG, ... by its extension).
void draw_boxes(const std::filesystem::path& image, const std::vector<LabelledBox>& boxes,
                const std::filesystem::path& out);

// Writes a strip of `frames` uniformly sampled frames of `video`; frames inside a span are framed in red
// and labelled with the span's phrase.
void draw_frame_strip(const std::filesystem::path& video, const std::vector<LabelledSpan>& spans,
                      const std::filesystem::path& out, int64_t frames = 8);

}  // namespace lego::io
