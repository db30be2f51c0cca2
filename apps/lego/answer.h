// JSON of an answer's grounding, shared by `lego infer` and `lego chat`.
#pragma once

#include <nlohmann/json.hpp>

#include "lego/pipeline/pipeline.h"

namespace lego::cli {

// {"boxes": [{phrase, box_square (as written), box (relative to its medium), box_<unit> (absolute, or
// box_px null when no medium carries it), medium}], "spans": [{phrase, span, seconds (or null), medium}]}.
nlohmann::json grounding_json(const Grounding& grounding);

}  // namespace lego::cli
