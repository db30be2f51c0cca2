// CLIP image preprocessing as the released LEGO code does it (LLaVA's, through CLIPImageProcessor):
// pad to a centred square with the mean colour (LLaVA's expand2square, never built), resize the shortest edge with
// PIL's bicubic bit for bit (image/resample.h), centre-crop, scale to [0, 1], normalise with CLIP's mean and std.
#pragma once

#include <ATen/core/Tensor.h>

#include <array>

#include "lego/sdk/io/image_reader.h"

namespace lego::image {

struct ClipPreprocessOptions {
  int64_t size = 336;  // shortest edge after resize, and the crop
  bool pad_to_square = true;
  // OpenAI CLIP's normalisation (CLIPImageProcessor defaults).
  std::array<double, 3> mean{0.48145466, 0.4578275, 0.40821073};
  std::array<double, 3> std{0.26862954, 0.26130258, 0.27577711};
};

// The pad colour: int(mean * 255) per channel, (122, 116, 104) for CLIP.
std::array<uint8_t, 3> pad_colour(const ClipPreprocessOptions& options);

// RGB [H, W, 3] uint8 -> [3, size, size] float32.
at::Tensor clip_preprocess(const io::Image& image, const ClipPreprocessOptions& options);

}  // namespace lego::image
