// Grounding text: boxes `[x1, y1, x2, y2]` and time spans `{t1, t2}` written in answers (DESIGN.md,
// "Text format of grounding"; shared/reference/lego-original.md section 6).
//
// Boxes are relative to the frame the model saw (for pictures the *padded square*), 3 decimals; spans are
// relative to the duration, 2 decimals. The formatter writes exactly that; the parser reads model output
// tolerantly (spacing, swapped corners, values outside [0, 1], several boxes after one phrase) and the
// modality of each medium maps them back onto it (geometry helpers: lego/sdk/grounding.h).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "lego/sdk/grounding.h"

namespace lego::grounding {

struct BoxMention {
  std::string phrase;  // the words the box grounds
  // As written, each axis ordered (min corner first, then max corner) and clipped to [0, 1]: 4 values for
  // a 2-D box [x1, y1, x2, y2], 6 for a 3-D box [x1, y1, z1, x2, y2, z2].
  std::vector<double> values;
  Box box;  // the 2-D box of `values` (zero for other sizes)
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
// A box of any dimension, min corner then max corner, 3 decimals: 4 values "[x1, y1, x2, y2]", 6 values
// "[x1, y1, z1, x2, y2, z2]". Throws InvalidArgument unless it has 4 or 6 finite values.
std::string format_box_values(const std::vector<double>& values);
// Intersection over union of two boxes of the same dimension (4 values: areas, 6: volumes), each given as
// min corner then max corner; 0 when the union is empty. Throws InvalidArgument on other sizes.
double box_iou(const std::vector<double>& a, const std::vector<double>& b);

// Every box (4 or 6 values) and span in `text`, in order. A mention's phrase is the text between the previous mention
// (or the start of the sentence) and the mention; boxes separated only by commas, spaces or "and" share
// the phrase before the first of them.
Mentions parse(std::string_view text);

}  // namespace lego::grounding
