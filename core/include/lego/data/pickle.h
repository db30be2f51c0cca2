// A bounded reader of Python pickles that hold plain data — dicts, lists, tuples, strings, numbers,
// booleans and None — such as RefCOCO's `refs(unc).p` (written by Python 2's cPickle, protocol 0 to 2;
// protocols 3 to 5 are read too). Used by `lego convert` (lego/data/convert.h) to read annotation pickles
// without Python. Anything else a pickle can hold (classes, functions, reduce calls) is refused: reading
// it would mean running code.
#pragma once

#include <string>
#include <string_view>

namespace lego::data {

// The pickle `bytes` as JSON text: dicts become objects (keys that are numbers become their decimal text),
// lists and tuples arrays, Python 2 byte strings text (UTF-8 kept, other bytes read as Latin-1). Format
// error naming `source` and the byte offset for a truncated pickle, an opcode outside plain data, a length
// past the end, or nesting deeper than 200 (a pickle referring to itself).
std::string pickle_to_json(std::string_view bytes, const std::string& source);

}  // namespace lego::data
