// Converters of annotated picture regions: RefCOCO/RefCOCO+/RefCOCOg (phrase -> box), Visual Genome region
// descriptions (box -> phrase) and VGGSS (sound -> box of its source in the frame).
#include <algorithm>
#include <cctype>
#include <cmath>
#include <tuple>
#include <unordered_map>

#include "convert_context.h"
#include "lego/data/pickle.h"

namespace lego::data::convert_detail {
namespace {

struct Picture {
  double width = 0, height = 0;
  std::string path;
};

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

// The refs pickle of the refer toolkit, as JSON; a JSON file is accepted too (refs converted earlier).
Json read_refs(const std::filesystem::path& file) {
  const auto bytes = read_input(file, "refs pickle");
  const auto first = bytes.find_first_not_of(" \t\r\n");
  if (first != std::string::npos && bytes[first] == '[') {
    try {
      return Json::parse(bytes);
    } catch (const Json::parse_error& e) {
      bad_input(file, "is not JSON (byte " + std::to_string(e.byte) + ")");
    }
  }
  return Json::parse(pickle_to_json(bytes, file.string()));
}

}  // namespace

void convert_refer(Converter& c) {
  c.require_inputs(2, 2, "two files: the refs pickle (refs(unc).p, refs(umd).p, ...) then instances.json");
  const auto& refs_file = c.inputs()[0];
  const auto& instances_file = c.inputs()[1];
  const Json refs = read_refs(refs_file);
  if (!refs.is_array()) bad_input(refs_file, "is not a list of refs");
  const Json instances = read_json(instances_file, "COCO instances file");
  if (!instances.is_object() || !instances.contains("images") || !instances["images"].is_array() ||
      !instances.contains("annotations") || !instances["annotations"].is_array()) {
    bad_input(instances_file, "is not a COCO instances file (an object with 'images' and 'annotations' lists)");
  }
  std::unordered_map<std::string, Picture> pictures;
  for (const auto& image : instances["images"]) {
    if (!image.is_object()) continue;
    const auto id = id_text(image, "id");
    const auto w = number(image, "width");
    const auto h = number(image, "height");
    const auto name = text(image, "file_name");
    if (id && w && h && name) pictures[*id] = {*w, *h, *name};
  }
  struct Annotation {
    std::vector<double> bbox;
    std::string image_id;
  };
  std::unordered_map<std::string, Annotation> annotations;
  for (const auto& a : instances["annotations"]) {
    if (!a.is_object()) continue;
    const auto id = id_text(a, "id");
    const auto image_id = id_text(a, "image_id");
    const auto bbox = a.find("bbox");
    if (!id || !image_id || bbox == a.end() || !bbox->is_array() || bbox->size() != 4) continue;
    Annotation ann{{}, *image_id};
    for (const auto& v : *bbox) ann.bbox.push_back(v.is_number() ? v.get<double>() : std::nan(""));
    annotations[*id] = std::move(ann);
  }

  const auto& split = c.options().split;
  for (size_t r = 0; r < refs.size() && !c.full(); ++r) {
    const auto& ref = refs[r];
    if (!ref.is_object()) bad_input(refs_file, "ref " + std::to_string(r) + " is not a dict");
    const auto sentences = ref.find("sentences");
    if (sentences == ref.end() || !sentences->is_array() || sentences->empty()) {
      c.count_read();
      c.drop(kMissingField);
      continue;
    }
    const auto ref_split = text(ref, "split");
    const auto ann_id = id_text(ref, "ann_id");
    const auto ref_id = id_text(ref, "ref_id").value_or(std::to_string(r));
    for (size_t k = 0; k < sentences->size() && !c.full(); ++k) {
      const auto& sentence = (*sentences)[k];
      c.count_read();
      if (!split.empty() && ref_split && *ref_split != split) {
        c.drop(kOtherSplit);
        continue;
      }
      auto words = sentence.is_object() ? text(sentence, "sent") : std::nullopt;
      if (!words && sentence.is_object()) words = text(sentence, "raw");
      if (!words || !ann_id || !ref_split) {
        c.drop(kMissingField);
        continue;
      }
      const auto ann = annotations.find(*ann_id);
      const auto picture = ann == annotations.end() ? pictures.end() : pictures.find(ann->second.image_id);
      if (picture == pictures.end()) {
        c.drop(kUnknownReference);
        continue;
      }
      const auto& b = ann->second.bbox;
      const auto& p = picture->second;
      const auto box = c.square_box(b[0], b[1], b[0] + b[2], b[1] + b[3], p.width, p.height);
      if (!box) continue;
      const auto phrase = c.clean_text(*words);
      if (!phrase) continue;
      const auto answer = grounding::format_box(*box);
      if (!c.claim(p.path + '\n' + answer + '\n' + lower(*phrase))) continue;
      const auto sent_id = sentence.is_object() ? id_text(sentence, "sent_id") : std::nullopt;
      c.emit({c.options().source + "-" + ref_id + "-" + sent_id.value_or(std::to_string(k)),
              {p.path},
              c.question("rec", {{"exp", *phrase}}),
              answer});
    }
  }
}

void convert_vg_regions(Converter& c) {
  c.require_inputs(2, 2, "two files: region_descriptions.json then image_data.json");
  const auto& regions_file = c.inputs()[0];
  const auto& images_file = c.inputs()[1];
  const Json images = read_json(images_file, "Visual Genome image data");
  if (!images.is_array()) bad_input(images_file, "is not a list of images");
  std::unordered_map<std::string, Picture> pictures;
  for (size_t i = 0; i < images.size(); ++i) {
    const auto& image = images[i];
    if (!image.is_object()) bad_input(images_file, "image " + std::to_string(i) + " is not an object");
    auto id = id_text(image, "image_id");
    if (!id) id = id_text(image, "id");
    const auto w = number(image, "width");
    const auto h = number(image, "height");
    if (!id || !w || !h) continue;
    // The released folders keep the URL's last folder: VG_100K/1.jpg, VG_100K_2/2.jpg.
    std::string path = *id + ".jpg";
    if (const auto url = text(image, "url")) {
      const auto last = url->rfind('/');
      const auto before = last == std::string::npos || last == 0 ? std::string::npos : url->rfind('/', last - 1);
      if (before != std::string::npos && last + 1 < url->size()) path = url->substr(before + 1);
    }
    pictures[*id] = {*w, *h, path};
  }
  const Json all = read_json(regions_file, "Visual Genome region descriptions");
  if (!all.is_array()) bad_input(regions_file, "is not a list of images with regions");
  for (size_t i = 0; i < all.size() && !c.full(); ++i) {
    const auto& entry = all[i];
    if (!entry.is_object()) bad_input(regions_file, "entry " + std::to_string(i) + " is not an object");
    const auto regions = entry.find("regions");
    if (regions == entry.end() || !regions->is_array()) {
      c.count_read();
      c.drop(kMissingField);
      continue;
    }
    auto entry_image = id_text(entry, "id");
    if (!entry_image) entry_image = id_text(entry, "image_id");
    for (const auto& region : *regions) {
      if (c.full()) break;
      c.count_read();
      if (!region.is_object()) {
        c.drop(kMissingField);
        continue;
      }
      const auto image_id = id_text(region, "image_id") ? id_text(region, "image_id") : entry_image;
      const auto x = number(region, "x"), y = number(region, "y"), w = number(region, "width"), h = number(region, "height");
      const auto phrase_text = text(region, "phrase");
      const auto region_id = id_text(region, "region_id");
      if (!image_id || !x || !y || !w || !h || !phrase_text || !region_id) {
        c.drop(kMissingField);
        continue;
      }
      const auto picture = pictures.find(*image_id);
      if (picture == pictures.end()) {
        c.drop(kUnknownReference);
        continue;
      }
      const auto& p = picture->second;
      const auto box = c.square_box(*x, *y, *x + *w, *y + *h, p.width, p.height);
      if (!box) continue;
      const auto phrase = c.clean_text(*phrase_text);
      if (!phrase) continue;
      const auto box_text = grounding::format_box(*box);
      if (!c.claim(p.path + '\n' + box_text + '\n' + lower(*phrase))) continue;
      c.emit({"vg-" + *region_id, {p.path}, c.question("region_caption", {{"box", box_text}}), *phrase});
    }
  }
}

void convert_vggss(Converter& c) {
  c.require_inputs(1, 2, "vggss.json, then optionally a CSV of frame sizes (file,width,height)");
  const auto& file = c.inputs()[0];
  std::unordered_map<std::string, std::pair<double, double>> sizes;
  if (c.inputs().size() == 2) {
    const auto& sizes_file = c.inputs()[1];
    const auto rows = read_csv(sizes_file, "frame sizes CSV");
    const size_t name_col = csv_column(rows[0], "file", sizes_file);
    const size_t w_col = csv_column(rows[0], "width", sizes_file);
    const size_t h_col = csv_column(rows[0], "height", sizes_file);
    for (size_t r = 1; r < rows.size(); ++r) {
      const auto& row = rows[r];
      if (row.size() <= std::max({name_col, w_col, h_col})) bad_input(sizes_file, "row " + std::to_string(r + 1) + " has too few columns");
      char* end_w = nullptr;
      char* end_h = nullptr;
      const double w = std::strtod(row[w_col].c_str(), &end_w);
      const double h = std::strtod(row[h_col].c_str(), &end_h);
      if (row[w_col].empty() || row[h_col].empty() || *end_w != 0 || *end_h != 0) {
        bad_input(sizes_file, "row " + std::to_string(r + 1) + " has a width or height that is not a number");
      }
      sizes[row[name_col]] = {w, h};
    }
  }
  const Json all = read_json(file, "VGGSS annotations");
  if (!all.is_array()) bad_input(file, "is not a list of annotations");
  for (size_t i = 0; i < all.size() && !c.full(); ++i) {
    const auto& entry = all[i];
    if (!entry.is_object()) bad_input(file, "entry " + std::to_string(i) + " is not an object");
    c.count_read();
    const auto name = text(entry, "file");
    const auto boxes = entry.find("bbox");
    if (!name || name->empty() || boxes == entry.end() || !boxes->is_array() || boxes->empty()) {
      c.drop(kMissingField);
      continue;
    }
    // VGGSS boxes are relative to the frame; without its size the frame is taken as square.
    double width = 1, height = 1;
    if (!sizes.empty()) {
      const auto size = sizes.find(*name);
      if (size == sizes.end()) {
        c.drop(kUnknownReference);
        continue;
      }
      std::tie(width, height) = size->second;
    }
    std::string answer;
    bool valid = true;
    for (const auto& b : *boxes) {
      if (!b.is_array() || b.size() != 4 || !std::all_of(b.begin(), b.end(), [](const Json& v) { return v.is_number(); })) {
        valid = false;
        c.drop(kMissingField);
        break;
      }
      const auto box = c.square_box(b[0].get<double>() * width, b[1].get<double>() * height, b[2].get<double>() * width,
                                    b[3].get<double>() * height, width, height);
      if (!box) {
        valid = false;
        break;
      }
      answer += (answer.empty() ? "" : ", ") + grounding::format_box(*box);
    }
    if (!valid || !c.claim(*name)) continue;
    c.emit({"vggss-" + *name, {*name + ".jpg", *name + ".wav"}, c.question("sound_localization", {}), answer});
  }
}

}  // namespace lego::data::convert_detail
