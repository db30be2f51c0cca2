// Grounding text: boxes `[x1, y1, x2, y2]` and time spans `{t1, t2}` written in answers (DESIGN.md,
// "Text format of grounding"; shared/reference/lego-original.md section 6).
//
// Boxes are relative to the *padded square* image the model saw (expand2square), 3 decimals; spans are
// relative to the duration, 2 decimals. The formatter writes exactly that; the parser reads model output
// tolerantly (spacing, swapped corners, values outside [0, 1], several boxes after one phrase) and the
// de-normalisers map values back onto the original media.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace lego::grounding {

struct Box {
  double x1 = 0, y1 = 0, x2 = 0, y2 = 0;
};

struct Span {
  double t1 = 0, t2 = 0;
};

struct BoxMention {
  std::string phrase;  // the words the box grounds
  Box box;             // as written (relative to the padded square), corners ordered, clipped to [0, 1]
  size_t begin = 0;    // byte range of the box text in the answer
  size_t end = 0;
};

struct SpanMention {
  std::string phrase;
  Span span;  // relative to the duration, ordered, clipped to [0, 1]
  size_t begin = 0;
  size_t end = 0;
};

struct Mentions {
  std::vector<BoxMention> boxes;
  std::vector<SpanMention> spans;
};

// "[0.128, 0.565, 0.204, 0.720]"
std::string format_box(const Box& box);
// "{0.14, 0.32}"
std::string format_span(const Span& span);

// Every box and span in `text`, in order. A mention's phrase is the text between the previous mention
// (or the start of the sentence) and the mention; boxes separated only by commas, spaces or "and" share
// the phrase before the first of them.
Mentions parse(std::string_view text);

// A box relative to the padded square -> relative to the original `width` x `height` image (3 decimals,
// clipped), undoing the centred padding on the short axis.
Box unpad_box(const Box& square, int64_t width, int64_t height);
// The inverse: a box relative to the original image -> relative to its padded square.
Box pad_box(const Box& original, int64_t width, int64_t height);
// A relative box -> pixels of a `width` x `height` image.
Box to_pixels(const Box& relative, int64_t width, int64_t height);

double iou(const Box& a, const Box& b);
double iou(const Span& a, const Span& b);

}  // namespace lego::grounding
