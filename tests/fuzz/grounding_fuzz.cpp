// Fuzzes the grounding parser (grounding::parse) on answer text, checking what its header promises:
// boxes of 4 or 6 values and spans, each axis ordered and clipped to [0, 1], byte ranges inside the text,
// in order and not overlapping; and that what format_box / format_span write parses back to the same
// values at their precision. The SDK geometry (unpad/pad/to_pixels/iou) gets the parsed boxes too.
#include <cmath>
#include <string>
#include <string_view>

#include "fuzz_support.h"
#include "lego/grounding/grounding.h"

namespace {

namespace g = lego::grounding;
using lego::fuzz::check;

bool unit(double v) { return std::isfinite(v) && v >= 0.0 && v <= 1.0; }

void check_range(std::string_view text, size_t begin, size_t end, char open, char close, size_t& previous_end) {
  check(begin < end && end <= text.size(), "mention byte range outside the text");
  check(begin >= previous_end, "mentions overlap or are out of order");
  check(text[begin] == open && text[end - 1] == close, "mention range does not cover its brackets");
  previous_end = end;
}

void check_box_round_trip(const g::Box& box) {
  const std::string written = g::format_box(box);
  const auto again = g::parse(written);
  check(again.boxes.size() == 1 && again.spans.empty(), "format_box wrote '" + written + "', parsed as something else");
  const g::Box& b = again.boxes[0].box;
  const double tol = 0.0005 + 1e-12;
  check(std::abs(b.x1 - box.x1) <= tol && std::abs(b.y1 - box.y1) <= tol && std::abs(b.x2 - box.x2) <= tol &&
            std::abs(b.y2 - box.y2) <= tol,
        "format_box -> parse moved the box: " + written);
}

void check_geometry(const g::Box& box, int64_t width, int64_t height) {
  const g::Box unpadded = g::unpad_box(box, width, height);
  const g::Box padded = g::pad_box(unpadded, width, height);
  const g::Box pixels = g::to_pixels(unpadded, width, height);
  for (double v : {unpadded.x1, unpadded.y1, unpadded.x2, unpadded.y2, padded.x1, padded.y1, padded.x2, padded.y2,
                   pixels.x1, pixels.y1, pixels.x2, pixels.y2}) {
    check(std::isfinite(v), "box geometry gave a non-finite value");
  }
  const double iou = g::iou(box, unpadded);
  check(std::isfinite(iou) && iou >= 0.0 && iou <= 1.0 + 1e-9, "iou outside [0, 1]");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  g::Mentions m;
  if (!lego::fuzz::refused_or_done([&] { m = g::parse(text); })) return 0;
  // Image size for the geometry, from the input's first bytes (1..4096 each way).
  const int64_t width = size > 0 ? 1 + (data[0] * 16) % 4096 : 640;
  const int64_t height = size > 1 ? 1 + (data[1] * 16) % 4096 : 480;

  size_t end = 0;
  for (const auto& b : m.boxes) {
    check(b.values.size() == 4 || b.values.size() == 6, "a box of " + std::to_string(b.values.size()) + " values");
    for (double v : b.values) check(unit(v), "box value outside [0, 1]");
    const size_t axes = b.values.size() / 2;
    for (size_t a = 0; a < axes; ++a) check(b.values[a] <= b.values[a + axes], "box axis not ordered");
    check_range(text, b.begin, b.end, '[', ']', end);
    if (b.values.size() == 4) {
      check(b.box.x1 == b.values[0] && b.box.y1 == b.values[1] && b.box.x2 == b.values[2] && b.box.y2 == b.values[3],
            "box differs from its values");
      check_box_round_trip(b.box);
      check_geometry(b.box, width, height);
    }
  }
  end = 0;
  for (const auto& s : m.spans) {
    check(unit(s.span.t1) && unit(s.span.t2) && s.span.t1 <= s.span.t2, "span not ordered inside [0, 1]");
    check_range(text, s.begin, s.end, '{', '}', end);
    const std::string written = g::format_span(s.span);
    const auto again = g::parse(written);
    check(again.spans.size() == 1 && again.boxes.empty(), "format_span wrote '" + written + "', parsed otherwise");
    check(std::abs(again.spans[0].span.t1 - s.span.t1) <= 0.005 + 1e-12 &&
              std::abs(again.spans[0].span.t2 - s.span.t2) <= 0.005 + 1e-12,
          "format_span -> parse moved the span: " + written);
    const double iou = g::iou(s.span, again.spans[0].span);
    check(std::isfinite(iou) && iou >= 0.0 && iou <= 1.0 + 1e-9, "span iou outside [0, 1]");
  }
  return 0;
}
