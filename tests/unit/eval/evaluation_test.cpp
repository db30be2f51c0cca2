// Scoring of answers against references: the box task reads 2-D boxes, rec3d 3-D ones, temporal spans.
#include <gtest/gtest.h>

#include "lego/eval/evaluation.h"
#include "lego/sdk/error.h"

namespace lego::eval {
namespace {

TEST(Evaluation, TaskNamesAreCanonicalised) {
  EXPECT_EQ(canonical_task("sound-loc"), "sound_localization");
  EXPECT_EQ(canonical_task("rec3d"), "rec3d");
  EXPECT_THROW(canonical_task("rec4d"), Error);
}

TEST(Evaluation, RecScoresTheFirstTwoDimensionalBox) {
  EXPECT_NEAR(score_answer("rec", "it [0.0, 0.0, 0.5, 1.0]", "[0.25, 0.0, 0.75, 1.0]"), 1.0 / 3.0, 1e-12);
  // A 3-D box is not an answer to a 2-D question.
  EXPECT_EQ(score_answer("rec", "[0, 0, 0, 0.5, 1, 1]", "[0.25, 0.0, 0.75, 1.0]"), 0.0);
}

TEST(Evaluation, Rec3dScoresTheFirstThreeDimensionalBoxByVolume) {
  EXPECT_NEAR(score_answer("rec3d", "the cube [0, 0, 0, 0.5, 1, 1] and [0.9, 0.9, 0.9, 1, 1, 1]",
                           "[0.25, 0, 0, 0.75, 1, 1]"),
              1.0 / 3.0, 1e-12);
  EXPECT_NEAR(score_answer("rec3d", "[0.1, 0.2, 0.3, 0.4, 0.5, 0.6]", "[0.1, 0.2, 0.3, 0.4, 0.5, 0.6]"), 1.0, 1e-12);
  EXPECT_EQ(score_answer("rec3d", "[0.1, 0.2, 0.3, 0.4]", "[0.1, 0.2, 0.3, 0.4, 0.5, 0.6]"), 0.0);
  EXPECT_EQ(score_answer("rec3d", "no box here", "[0.1, 0.2, 0.3, 0.4, 0.5, 0.6]"), 0.0);
}

TEST(Evaluation, TemporalScoresTheFirstSpan) {
  EXPECT_NEAR(score_answer("temporal", "{0.00, 0.50}", "{0.25, 0.75}"), 1.0 / 3.0, 1e-12);
}

}  // namespace
}  // namespace lego::eval
