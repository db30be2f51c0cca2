// Grounding geometry shared by core and plugins (DESIGN.md, "Text format of grounding").
//
// Core parses the boxes and spans an answer writes; a plugin maps them back onto its own media. These are
// the 2-D box and span helpers of the released image convention: boxes relative to the padded square the
// model saw (expand2square), spans relative to the duration. Plugins with other geometry (3-D boxes) keep
// their mapping in their own code.
#pragma once

#include <cstdint>

namespace lego::grounding {

struct Box {
  double x1 = 0, y1 = 0, x2 = 0, y2 = 0;
};

struct Span {
  double t1 = 0, t2 = 0;
};

// A box relative to the padded square -> relative to the original `width` x `height` image (3 decimals,
// clipped), undoing the centred padding on the short axis, in whole square pixels as the released code.
Box unpad_box(const Box& square, int64_t width, int64_t height);
// The inverse: a box relative to the original image -> relative to its padded square.
Box pad_box(const Box& original, int64_t width, int64_t height);
// A relative box -> pixels of a `width` x `height` image.
Box to_pixels(const Box& relative, int64_t width, int64_t height);

double iou(const Box& a, const Box& b);
double iou(const Span& a, const Span& b);

}  // namespace lego::grounding
