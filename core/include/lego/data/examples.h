// Training examples: a row rendered in the training template (conv_lego), tokenized, with its labels
// masked (DESIGN.md, core/data). The placeholders of a row's media expand to the modality's start, patch
// and end tokens through the same Pipeline that serves inference, so one template engine serves both.
//
// Masking::Released is the release's (LLaVA-v0) rule, quirks included: every piece (the header, then each
// turn "### Role: value\n") is tokenized on its own with BOS and those lengths walk the whole tokenized
// conversation; the header is masked, each human turn except its first two tokens is masked, assistant
// turns and the trailing "### " are targets. Masking::HumanTurns masks the header and every human turn
// exactly and makes every assistant turn (and the trailing "### ") a target; its ids are the whole
// conversation tokenized at once, the same ids as Released's and as an inference prompt's.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "lego/data/rows.h"

namespace lego {
class Pipeline;
}

namespace lego::data {

// IGNORE_INDEX of the release: a label the loss skips.
inline constexpr int64_t kIgnoreLabel = -100;

enum class Masking { Released, HumanTurns };
// "released" / "human_turns"; throws InvalidArgument otherwise.
Masking parse_masking(const std::string& name);

struct Example {
  std::vector<int64_t> ids;     // BOS first, media blocks expanded
  std::vector<int64_t> labels;  // ids, or kIgnoreLabel where masked
  std::vector<RowMedium> media; // in the order of their blocks
  bool truncated = false;       // cut at max_length (never inside a media block)
  int64_t targets = 0;          // labels that are not kIgnoreLabel
};

struct ExampleOptions {
  Masking masking = Masking::Released;
  int64_t max_length = 2048;  // the release's model_max_length
  // The release moves each turn's placeholders to the front of the turn, in the model's media order.
  bool media_first = true;
};

class ExampleBuilder {
 public:
  ExampleBuilder(const Pipeline& pipeline, ExampleOptions options);
  // The row as an example. Throws Format naming row.where(): a placeholder count that differs from the
  // row's media of that modality, or media blocks that do not fit in max_length ("too long"). A row whose
  // labels all end up masked is returned with targets == 0: the caller counts it.
  Example build(const Row& row) const;

 private:
  const Pipeline& pipeline_;
  ExampleOptions options_;
};

}  // namespace lego::data
