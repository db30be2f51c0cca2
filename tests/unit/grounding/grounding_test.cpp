// Grounding text: exact formatting, tolerant parsing, de-normalisation from the padded square, IoU.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "lego/grounding/grounding.h"
#include "lego/sdk/error.h"

namespace lego::grounding {
namespace {

void expect_box(const Box& b, double x1, double y1, double x2, double y2) {
  EXPECT_NEAR(b.x1, x1, 1e-9);
  EXPECT_NEAR(b.y1, y1, 1e-9);
  EXPECT_NEAR(b.x2, x2, 1e-9);
  EXPECT_NEAR(b.y2, y2, 1e-9);
}

TEST(Grounding, FormatsThePapersText) {
  EXPECT_EQ(format_box({0.128, 0.565, 0.204, 0.72}), "[0.128, 0.565, 0.204, 0.720]");
  EXPECT_EQ(format_span({0.14, 0.3249}), "{0.14, 0.32}");
  EXPECT_EQ(format_box({0, 0, 1, 1}), "[0.000, 0.000, 1.000, 1.000]");
}

TEST(Grounding, ParsesBoxesWithTheirPhrases) {
  auto m = parse("The man on the left [0.052, 0.201, 0.410, 0.987] is holding a red umbrella [0.101, 0.150, 0.388, 0.402].");
  ASSERT_EQ(m.boxes.size(), 2u);
  EXPECT_EQ(m.boxes[0].phrase, "The man on the left");
  expect_box(m.boxes[0].box, 0.052, 0.201, 0.410, 0.987);
  EXPECT_EQ(m.boxes[1].phrase, "is holding a red umbrella");
}

TEST(Grounding, ToleratesSpacingSwappedCornersAndOutOfRangeValues) {
  auto m = parse("a cat [0.5,0.6 ,  0.1,0.2] and a dog [ -0.1, 0.3, 1.2, .5 ]");
  ASSERT_EQ(m.boxes.size(), 2u);
  expect_box(m.boxes[0].box, 0.1, 0.2, 0.5, 0.6);
  expect_box(m.boxes[1].box, 0.0, 0.3, 1.0, 0.5);
  EXPECT_EQ(m.boxes[1].phrase, "and a dog");
}

TEST(Grounding, ParsesThreeDimensionalBoxesAxisByAxis) {
  auto m = parse("the chair [0.5, 0.1, 0.9, 0.2, 0.6, 0.3] next to a table [0.1, 0.2, 0.3, 0.4]; not a box [1, 2, 3]");
  ASSERT_EQ(m.boxes.size(), 2u);
  EXPECT_EQ(m.boxes[0].phrase, "the chair");
  EXPECT_EQ(m.boxes[0].values, (std::vector<double>{0.2, 0.1, 0.3, 0.5, 0.6, 0.9}));
  EXPECT_EQ(m.boxes[1].values.size(), 4u);
  expect_box(m.boxes[1].box, 0.1, 0.2, 0.3, 0.4);
}

TEST(Grounding, SeveralBoxesAfterOnePhraseShareIt) {
  auto m = parse("Two dogs [0.1, 0.1, 0.2, 0.2], [0.3, 0.3, 0.4, 0.4] and [0.5, 0.5, 0.6, 0.6] play.");
  ASSERT_EQ(m.boxes.size(), 3u);
  for (const auto& b : m.boxes) EXPECT_EQ(b.phrase, "Two dogs");
}

TEST(Grounding, PhraseStopsAtTheSentenceStart) {
  auto m = parse("It is sunny. The bell [0.602, 0.118, 0.699, 0.240] rings.");
  ASSERT_EQ(m.boxes.size(), 1u);
  EXPECT_EQ(m.boxes[0].phrase, "The bell");
}

TEST(Grounding, ParsesSpans) {
  auto m = parse("The person starts to sing at {0.05, 0.20} and claps at {0.93,0.71}.");
  ASSERT_EQ(m.spans.size(), 2u);
  EXPECT_EQ(m.spans[0].phrase, "The person starts to sing at");
  EXPECT_NEAR(m.spans[0].span.t1, 0.05, 1e-12);
  EXPECT_NEAR(m.spans[1].span.t1, 0.71, 1e-12);  // swapped ends are ordered
  EXPECT_NEAR(m.spans[1].span.t2, 0.93, 1e-12);
}

TEST(Grounding, IgnoresBracketsThatAreNotBoxes) {
  auto m = parse("see [1] and [a, b, c, d] or {x} and [0.1, 0.2, 0.3]");
  EXPECT_TRUE(m.boxes.empty());
  EXPECT_TRUE(m.spans.empty());
}

// The released code's post-processing (GroundingGPT mm_utils.postprocess_output; its issue #11): boxes
// are relative to the padded square, so a wide image's y values lose the top padding.
TEST(Grounding, NumbersBeyondADoubleAreClippedInsteadOfThrown) {
  // std::stod threw std::out_of_range out of parse() (replayed through tests/fuzz/grounding_fuzz).
  const auto m = parse("a cat [" + std::string(400, '9') + ", 0, 0, 0.5] at {0." + std::string(400, '0') + "1, 0.5}");
  ASSERT_EQ(m.boxes.size(), 1u);
  expect_box(m.boxes[0].box, 0.0, 0.0, 1.0, 0.5);
  ASSERT_EQ(m.spans.size(), 1u);
  EXPECT_EQ(m.spans[0].span.t1, 0.0);
  EXPECT_EQ(m.spans[0].span.t2, 0.5);
}

TEST(Grounding, LongRunsAfterABracketDoNotOverflowTheStack) {
  // std::regex recursed once per matched character: 40 000 digits after '[' overflowed an 8 MB stack.
  EXPECT_TRUE(parse("[" + std::string(200000, '1')).boxes.empty());
  const auto m = parse("[" + std::string(100000, ' ') + "] then {" + std::string(100000, '0') + "} the cat [0.1, 0.2, 0.3, 0.4]");
  ASSERT_EQ(m.boxes.size(), 1u);
  expect_box(m.boxes[0].box, 0.1, 0.2, 0.3, 0.4);
  EXPECT_TRUE(m.spans.empty());
}

TEST(Grounding, UnpadsAWideImageAsTheReleasedCode) {
  // 640 x 480: padded to 640 x 640 with 80 px on top. y = 0.5 of the square is pixel 320 -> 240 of 480.
  expect_box(unpad_box({0.25, 0.5, 0.75, 0.625}, 640, 480), 0.25, 0.5, 0.75, 0.667);
  // Values inside the padding clip to the image.
  expect_box(unpad_box({0.0, 0.0, 1.0, 1.0}, 640, 480), 0.0, 0.0, 1.0, 1.0);
}

TEST(Grounding, UnpadsATallImage) {
  // 300 x 600: 150 px of padding on the left. x = 0.5 of the square is pixel 300 -> 150 of 300.
  expect_box(unpad_box({0.5, 0.1, 0.75, 0.9}, 300, 600), 0.5, 0.1, 1.0, 0.9);
}

TEST(Grounding, PadAndUnpadAreInverse) {
  const Box original{0.1, 0.2, 0.7, 0.9};
  for (auto [w, h] : {std::pair<int64_t, int64_t>{640, 480}, {480, 640}, {500, 500}, {1000, 333}}) {
    const Box back = unpad_box(pad_box(original, w, h), w, h);
    EXPECT_NEAR(back.x1, original.x1, 2e-3);
    EXPECT_NEAR(back.y1, original.y1, 2e-3);
    EXPECT_NEAR(back.x2, original.x2, 2e-3);
    EXPECT_NEAR(back.y2, original.y2, 2e-3);
  }
}

TEST(Grounding, SquareImagesNeedNoUnpaddingButSnapToWholePixelsAsReleased) {
  // The released code rounds to whole square pixels first, half to even: 0.565 * 500 = 282.5 -> 282.
  expect_box(unpad_box({0.128, 0.565, 0.204, 0.720}, 500, 500), 0.128, 0.564, 0.204, 0.720);
  expect_box(unpad_box({0.128, 0.566, 0.204, 0.720}, 500, 500), 0.128, 0.566, 0.204, 0.720);
  const Box px = to_pixels({0.1, 0.2, 0.3, 0.4}, 500, 500);
  expect_box(px, 50, 100, 150, 200);
}

TEST(Grounding, IntersectionOverUnion) {
  EXPECT_NEAR(iou(Box{0, 0, 1, 1}, Box{0, 0, 1, 1}), 1.0, 1e-12);
  EXPECT_NEAR(iou(Box{0, 0, 0.5, 1}, Box{0.25, 0, 0.75, 1}), 1.0 / 3.0, 1e-12);
  EXPECT_NEAR(iou(Box{0, 0, 0.1, 0.1}, Box{0.5, 0.5, 0.6, 0.6}), 0.0, 1e-12);
  EXPECT_NEAR(iou(Span{0.0, 0.5}, Span{0.25, 0.75}), 1.0 / 3.0, 1e-12);
  EXPECT_NEAR(iou(Span{0.1, 0.1}, Span{0.1, 0.1}), 0.0, 1e-12);
}

TEST(Grounding, BoxesOfAnyDimensionFormatAndOverlap) {
  EXPECT_EQ(format_box_values(std::vector<double>{0.1, 0.2, 0.3, 0.4}), format_box(Box{0.1, 0.2, 0.3, 0.4}));
  EXPECT_EQ(format_box_values(std::vector<double>{0.1, 0.2, 0.3, 0.4, 0.5, 0.6}), "[0.100, 0.200, 0.300, 0.400, 0.500, 0.600]");
  const auto again = parse("the cube " + format_box_values(std::vector<double>{0.1, 0.2, 0.3, 0.4, 0.5, 0.6}));
  ASSERT_EQ(again.boxes.size(), 1u);
  EXPECT_EQ(again.boxes[0].values, (std::vector<double>{0.1, 0.2, 0.3, 0.4, 0.5, 0.6}));
  // 2-D: the same as the Box overload.
  EXPECT_NEAR(box_iou({0, 0, 0.5, 1}, {0.25, 0, 0.75, 1}), iou(Box{0, 0, 0.5, 1}, Box{0.25, 0, 0.75, 1}), 1e-15);
  // 3-D: two unit-wide cubes offset by half along x share a third of their union; disjoint ones nothing.
  EXPECT_NEAR(box_iou({0, 0, 0, 0.5, 1, 1}, {0.25, 0, 0, 0.75, 1, 1}), 1.0 / 3.0, 1e-12);
  EXPECT_NEAR(box_iou({0, 0, 0, 0.5, 0.5, 0.5}, {0.25, 0.25, 0.25, 0.75, 0.75, 0.75}), 0.015625 / 0.234375, 1e-12);
  EXPECT_EQ(box_iou({0, 0, 0, 0.1, 0.1, 0.1}, {0.5, 0.5, 0.5, 0.6, 0.6, 0.6}), 0.0);
  EXPECT_EQ(box_iou({0, 0, 0, 0, 0, 0}, {0, 0, 0, 0, 0, 0}), 0.0);
  EXPECT_THROW(box_iou({0, 0, 1, 1}, {0, 0, 0, 1, 1, 1}), Error);
  EXPECT_THROW(box_iou({0, 0, 1}, {0, 0, 1}), Error);
  EXPECT_THROW(format_box_values(std::vector<double>{0, 0, 1, std::nan("")}), Error);
}

}  // namespace
}  // namespace lego::grounding
