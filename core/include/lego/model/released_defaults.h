// The released LEGO model's defaults that name its modalities: the one place in core that does
// (DESIGN.md, "Core and apps never name a modality"). import and init-model write them into model.ini;
// a model.ini written before `[model] media_order` existed falls back to them.
#pragma once

#include <string>
#include <vector>

namespace lego {

// The order in which the released training code puts media in front of the text: sound, video, image
// (its placeholders move to the front in order image, video, sound, each in front of the last).
const std::vector<std::string>& released_media_order();

// `modalities` in released order, the others after them in the order given.
std::vector<std::string> media_order_for(const std::vector<std::string>& modalities);

}  // namespace lego
