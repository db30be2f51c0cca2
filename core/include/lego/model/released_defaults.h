// The released LEGO model's defaults that name its modalities: the one place in core that does
// (DESIGN.md, "Core and apps never name a modality"). import and init-model write them into model.ini;
// a model.ini written before `[model] media_order` existed falls back to them.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace lego {

// The order in which the released training code puts media in front of the text: sound, video, image
// (its placeholders move to the front in order image, video, sound, each in front of the last).
const std::vector<std::string>& released_media_order();

// `modalities` in released order, the others after them in the order given.
std::vector<std::string> media_order_for(const std::vector<std::string>& modalities);

// A medium of an item in the released training JSON: the item's key holding its relative path and the
// placeholder its first question opens with (shared/reference/lego-original.md, sections 5 and 8).
struct ReleasedMedium {
  std::string key;
  std::string placeholder;
};

// Every medium the released training JSON knows, in the order the released code moves placeholders to the
// front (image, video, sound).
const std::vector<ReleasedMedium>& released_media();

// The media of one item `lego convert --from source` writes (a source's frames and sound both, for the
// sound localisation sets), in the order their placeholders open the question; InvalidArgument naming the
// source when it is not one convert reads.
const std::vector<ReleasedMedium>& released_media_of_source(std::string_view source);

// The field of DiDeMo's annotation entries that names the clip's file (the dataset's own key, which is the
// released modality's name).
const std::string& didemo_clip_field();

}  // namespace lego
