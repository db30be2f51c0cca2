#include "point_files.h"

#include <algorithm>
#include <bit>
#include <cctype>
#include <charconv>
#include <cmath>
#include <cstring>
#include <fstream>
#include <map>
#include <optional>
#include <sstream>

#include "lego/sdk/error.h"
#include "lego/sdk/files.h"

namespace pointcloud {
namespace {

using lego::Error;
using lego::ErrorKind;

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

std::string read_all(const std::filesystem::path& file) {
  const auto bytes = lego::require_regular_file(file, "point cloud");
  if (bytes > kMaxFileBytes) {
    throw Error(ErrorKind::InvalidArgument, file.string() + ": point cloud of " + std::to_string(bytes) +
                                                " bytes, more than the " + std::to_string(kMaxFileBytes) + " allowed");
  }
  std::ifstream in(file, std::ios::binary);
  std::string data(bytes, '\0');
  if (!in.read(data.data(), static_cast<std::streamsize>(bytes))) {
    throw Error(ErrorKind::Io, file.string() + ": cannot read the point cloud");
  }
  return data;
}

void check_count(uint64_t n, const std::filesystem::path& file) {
  if (n == 0) throw Error(ErrorKind::Format, file.string() + ": no points");
  if (n > static_cast<uint64_t>(kMaxPoints)) {
    throw Error(ErrorKind::InvalidArgument, file.string() + ": " + std::to_string(n) + " points, more than the " +
                                                std::to_string(kMaxPoints) + " allowed");
  }
}

void check_finite(const Cloud& c, const std::filesystem::path& file) {
  for (size_t i = 0; i < c.xyz.size(); ++i) {
    if (!std::isfinite(c.xyz[i])) {
      throw Error(ErrorKind::Format, file.string() + ": point " + std::to_string(i / 3) + " has a non-finite coordinate");
    }
  }
  for (size_t i = 0; i < c.rgb.size(); ++i) {
    if (!std::isfinite(c.rgb[i])) {
      throw Error(ErrorKind::Format, file.string() + ": point " + std::to_string(i / 3) + " has a non-finite colour");
    }
  }
}

// ---- PLY ----

enum class Encoding { Ascii, Little, Big };

struct Property {
  std::string name;
  int bytes = 0;  // 0 for a list property
  char kind = 'f';  // 'i' signed, 'u' unsigned, 'f' floating
};

struct Element {
  std::string name;
  uint64_t count = 0;
  std::vector<Property> properties;
  bool has_list() const {
    return std::any_of(properties.begin(), properties.end(), [](const Property& p) { return p.bytes == 0; });
  }
  uint64_t row_bytes() const {
    uint64_t n = 0;
    for (const auto& p : properties) n += static_cast<uint64_t>(p.bytes);
    return n;
  }
};

std::optional<Property> scalar_type(const std::string& t) {
  static const std::map<std::string, std::pair<int, char>> kTypes = {
      {"char", {1, 'i'}},   {"int8", {1, 'i'}},   {"uchar", {1, 'u'}},   {"uint8", {1, 'u'}},
      {"short", {2, 'i'}},  {"int16", {2, 'i'}},  {"ushort", {2, 'u'}},  {"uint16", {2, 'u'}},
      {"int", {4, 'i'}},    {"int32", {4, 'i'}},  {"uint", {4, 'u'}},    {"uint32", {4, 'u'}},
      {"float", {4, 'f'}},  {"float32", {4, 'f'}}, {"double", {8, 'f'}}, {"float64", {8, 'f'}}};
  const auto it = kTypes.find(t);
  if (it == kTypes.end()) return std::nullopt;
  return Property{"", it->second.first, it->second.second};
}

// One binary scalar as a double.
double read_scalar(const char* p, const Property& prop, bool swap) {
  unsigned char b[8];
  std::memcpy(b, p, static_cast<size_t>(prop.bytes));
  if (swap) std::reverse(b, b + prop.bytes);
  switch (prop.kind) {
    case 'f':
      if (prop.bytes == 4) { float v; std::memcpy(&v, b, 4); return v; }
      { double v; std::memcpy(&v, b, 8); return v; }
    case 'i':
      if (prop.bytes == 1) return static_cast<int8_t>(b[0]);
      if (prop.bytes == 2) { int16_t v; std::memcpy(&v, b, 2); return v; }
      { int32_t v; std::memcpy(&v, b, 4); return v; }
    default:
      if (prop.bytes == 1) return b[0];
      if (prop.bytes == 2) { uint16_t v; std::memcpy(&v, b, 2); return v; }
      { uint32_t v; std::memcpy(&v, b, 4); return v; }
  }
}

// A colour value in [0, 1]: integers scaled by their type's largest value, floats taken as they are.
float colour_value(double v, const Property& p) {
  if (p.kind == 'f') return static_cast<float>(std::clamp(v, 0.0, 1.0));
  const double top = p.bytes == 1 ? 255.0 : p.bytes == 2 ? 65535.0 : 4294967295.0;
  return static_cast<float>(std::clamp(v / top, 0.0, 1.0));
}

Cloud read_ply(const std::filesystem::path& file) {
  const std::string data = read_all(file);
  const auto where = [&](const std::string& what) { return file.string() + ": PLY " + what; };
  constexpr size_t kMaxHeader = 64 * 1024;
  const size_t end = data.find("end_header");
  if (data.rfind("ply", 0) != 0 || end == std::string::npos || end > kMaxHeader) {
    throw Error(ErrorKind::Format, file.string() + ": not a PLY file (no 'ply' ... 'end_header' header in its first 64 KiB)");
  }
  size_t body = data.find('\n', end);
  body = body == std::string::npos ? data.size() : body + 1;
  std::istringstream header(data.substr(0, end));
  std::optional<Encoding> encoding;
  std::vector<Element> elements;
  for (std::string line; std::getline(header, line);) {
    std::istringstream words(line);
    std::string key;
    words >> key;
    if (key == "format") {
      std::string f, version;
      words >> f >> version;
      if (f == "ascii") encoding = Encoding::Ascii;
      else if (f == "binary_little_endian") encoding = Encoding::Little;
      else if (f == "binary_big_endian") encoding = Encoding::Big;
      else throw Error(ErrorKind::Format, where("format '" + f + "' is none of ascii, binary_little_endian, binary_big_endian"));
    } else if (key == "element") {
      Element e;
      std::string count;
      words >> e.name >> count;
      const auto r = std::from_chars(count.data(), count.data() + count.size(), e.count);
      if (r.ec != std::errc() || r.ptr != count.data() + count.size()) {
        throw Error(ErrorKind::Format, where("element '" + e.name + "' has no count ('" + count + "')"));
      }
      elements.push_back(std::move(e));
    } else if (key == "property") {
      if (elements.empty()) throw Error(ErrorKind::Format, where("property before any element"));
      std::string type, name;
      words >> type;
      if (type == "list") {
        elements.back().properties.push_back({"", 0, 'l'});
        continue;
      }
      words >> name;
      auto p = scalar_type(type);
      if (!p) throw Error(ErrorKind::Format, where("property '" + name + "' has the unknown type '" + type + "'"));
      p->name = name;
      elements.back().properties.push_back(*p);
    }
  }
  if (!encoding) throw Error(ErrorKind::Format, where("header has no format line"));
  const auto vertex = std::find_if(elements.begin(), elements.end(), [](const Element& e) { return e.name == "vertex"; });
  if (vertex == elements.end()) throw Error(ErrorKind::Format, where("has no vertex element"));
  if (vertex->has_list()) throw Error(ErrorKind::Unsupported, where("vertex element has a list property"));
  check_count(vertex->count, file);
  auto index = [&](const std::string& name) -> int {
    for (size_t i = 0; i < vertex->properties.size(); ++i) {
      if (vertex->properties[i].name == name) return static_cast<int>(i);
    }
    return -1;
  };
  const int ix = index("x"), iy = index("y"), iz = index("z");
  if (ix < 0 || iy < 0 || iz < 0) throw Error(ErrorKind::Format, where("vertex element lacks x, y or z"));
  const int ir = index("red"), ig = index("green"), ib = index("blue");
  const bool colours = ir >= 0 && ig >= 0 && ib >= 0;
  const auto n = vertex->count;

  Cloud c;
  c.size = static_cast<int64_t>(n);
  if (*encoding == Encoding::Ascii) {
    std::istringstream in(data.substr(body));
    std::string line;
    auto next_line = [&](uint64_t row) {
      do {
        if (!std::getline(in, line)) throw Error(ErrorKind::Format, where("ends at vertex " + std::to_string(row) + " of " + std::to_string(n)));
      } while (line.find_first_not_of(" \t\r") == std::string::npos);
    };
    for (auto e = elements.begin(); e != vertex; ++e) {
      for (uint64_t r = 0; r < e->count; ++r) next_line(r);
    }
    // Every row holds at least one value per property, so the count is bounded by the bytes left.
    if (n * 2 * vertex->properties.size() > data.size() - body + 1) {
      throw Error(ErrorKind::Format, where("says " + std::to_string(n) + " vertices; the file is too short for them"));
    }
    c.xyz.reserve(n * 3);
    if (colours) c.rgb.reserve(n * 3);
    std::vector<double> v(vertex->properties.size());
    for (uint64_t r = 0; r < n; ++r) {
      next_line(r);
      std::istringstream words(line);
      for (auto& x : v) {
        if (!(words >> x)) throw Error(ErrorKind::Format, where("vertex " + std::to_string(r) + " has too few values"));
      }
      for (int a : {ix, iy, iz}) c.xyz.push_back(static_cast<float>(v[static_cast<size_t>(a)]));
      if (colours) {
        for (int a : {ir, ig, ib}) c.rgb.push_back(colour_value(v[static_cast<size_t>(a)], vertex->properties[static_cast<size_t>(a)]));
      }
    }
  } else {
    const bool swap = (*encoding == Encoding::Big) != (std::endian::native == std::endian::big);
    uint64_t offset = body;
    for (auto e = elements.begin(); e != vertex; ++e) {
      if (e->has_list()) throw Error(ErrorKind::Unsupported, where("binary element '" + e->name + "' with a list property before the vertices"));
      const uint64_t skip = e->row_bytes() * e->count;
      if (e->count != 0 && skip / e->count != e->row_bytes()) throw Error(ErrorKind::Format, where("element '" + e->name + "' is too large"));
      if (skip > data.size() - offset) throw Error(ErrorKind::Format, where("ends inside element '" + e->name + "'"));
      offset += skip;
    }
    const uint64_t row = vertex->row_bytes();
    if (row == 0 || n > (data.size() - offset) / row) {
      throw Error(ErrorKind::Format, where("says " + std::to_string(n) + " vertices of " + std::to_string(row) +
                                           " bytes; the file is too short for them"));
    }
    std::vector<uint64_t> at(vertex->properties.size());
    for (size_t i = 1; i < at.size(); ++i) at[i] = at[i - 1] + static_cast<uint64_t>(vertex->properties[i - 1].bytes);
    c.xyz.resize(n * 3);
    if (colours) c.rgb.resize(n * 3);
    for (uint64_t r = 0; r < n; ++r) {
      const char* p = data.data() + offset + r * row;
      const int axes[3] = {ix, iy, iz};
      for (int a = 0; a < 3; ++a) {
        const auto k = static_cast<size_t>(axes[a]);
        c.xyz[r * 3 + static_cast<uint64_t>(a)] = static_cast<float>(read_scalar(p + at[k], vertex->properties[k], swap));
      }
      if (colours) {
        const int cols[3] = {ir, ig, ib};
        for (int a = 0; a < 3; ++a) {
          const auto k = static_cast<size_t>(cols[a]);
          c.rgb[r * 3 + static_cast<uint64_t>(a)] = colour_value(read_scalar(p + at[k], vertex->properties[k], swap), vertex->properties[k]);
        }
      }
    }
  }
  return c;
}

// ---- XYZ ----

Cloud read_xyz(const std::filesystem::path& file) {
  const std::string data = read_all(file);
  Cloud c;
  std::istringstream in(data);
  int columns = 0;
  int64_t line_no = 0;
  for (std::string line; std::getline(in, line);) {
    ++line_no;
    const auto hash = line.find('#');
    if (hash != std::string::npos) line.resize(hash);
    std::replace(line.begin(), line.end(), ',', ' ');
    std::istringstream words(line);
    std::vector<double> v;
    for (double x; words >> x;) v.push_back(x);
    if (!words.eof()) throw Error(ErrorKind::Format, file.string() + ": line " + std::to_string(line_no) + " is not numbers");
    if (v.empty()) continue;
    if (v.size() != 3 && v.size() != 6) {
      throw Error(ErrorKind::Format, file.string() + ": line " + std::to_string(line_no) + " has " + std::to_string(v.size()) +
                                         " values; XYZ lines are 'x y z' or 'x y z r g b'");
    }
    if (columns == 0) columns = static_cast<int>(v.size());
    if (static_cast<int>(v.size()) != columns) {
      throw Error(ErrorKind::Format, file.string() + ": line " + std::to_string(line_no) + " has " + std::to_string(v.size()) +
                                         " values, earlier lines " + std::to_string(columns));
    }
    for (int a = 0; a < 3; ++a) c.xyz.push_back(static_cast<float>(v[static_cast<size_t>(a)]));
    for (int a = 3; a < columns; ++a) c.rgb.push_back(static_cast<float>(std::clamp(v[static_cast<size_t>(a)] / 255.0, 0.0, 1.0)));
    if (++c.size > kMaxPoints) check_count(static_cast<uint64_t>(c.size), file);  // refused before reading on
  }
  check_count(static_cast<uint64_t>(c.size), file);
  return c;
}

// ---- NPY ----

Cloud read_npy(const std::filesystem::path& file) {
  const std::string data = read_all(file);
  const auto bad = [&](const std::string& why) { return Error(ErrorKind::Format, file.string() + ": .npy " + why); };
  if (data.size() < 10 || data.compare(0, 6, "\x93NUMPY") != 0) throw bad("magic missing");
  const auto major = static_cast<unsigned char>(data[6]);
  size_t header_len = 0, start = 0;
  if (major == 1) {
    header_len = static_cast<unsigned char>(data[8]) | (static_cast<size_t>(static_cast<unsigned char>(data[9])) << 8);
    start = 10;
  } else if (major == 2 || major == 3) {
    if (data.size() < 12) throw bad("header cut short");
    for (int i = 0; i < 4; ++i) header_len |= static_cast<size_t>(static_cast<unsigned char>(data[8 + i])) << (8 * i);
    start = 12;
  } else {
    throw bad("version " + std::to_string(major) + " unknown");
  }
  if (header_len > data.size() - start) throw bad("header longer than the file");
  const std::string header = data.substr(start, header_len);
  auto value_of = [&](const std::string& key) {
    const auto k = header.find("'" + key + "'");
    if (k == std::string::npos) throw bad("header lacks '" + key + "'");
    const auto colon = header.find(':', k);
    if (colon == std::string::npos) throw bad("header's '" + key + "' has no value");
    return header.substr(colon + 1);
  };
  const std::string descr = value_of("descr");
  const auto q1 = descr.find('\''), q2 = descr.find('\'', q1 + 1);
  if (q1 == std::string::npos || q2 == std::string::npos) throw bad("descr is not a string");
  const std::string type = descr.substr(q1 + 1, q2 - q1 - 1);
  if (type != "<f4" && type != "<f8" && type != ">f4" && type != ">f8") {
    throw Error(ErrorKind::Unsupported, file.string() + ": .npy of dtype '" + type + "'; point clouds are float32 or float64");
  }
  if (value_of("fortran_order").find("False") != 0 && value_of("fortran_order").find(" False") != 0) {
    throw Error(ErrorKind::Unsupported, file.string() + ": .npy in Fortran order");
  }
  const std::string shape = value_of("shape");
  const auto open = shape.find('('), close = shape.find(')');
  if (open == std::string::npos || close == std::string::npos) throw bad("shape is not a tuple");
  std::vector<uint64_t> dims;
  std::istringstream dims_in(shape.substr(open + 1, close - open - 1));
  for (std::string d; std::getline(dims_in, d, ',');) {
    d.erase(std::remove_if(d.begin(), d.end(), [](unsigned char ch) { return std::isspace(ch) != 0; }), d.end());
    if (d.empty()) continue;
    uint64_t v = 0;
    const auto r = std::from_chars(d.data(), d.data() + d.size(), v);
    if (r.ec != std::errc() || r.ptr != d.data() + d.size()) throw bad("shape has '" + d + "'");
    dims.push_back(v);
  }
  if (dims.size() != 2 || (dims[1] != 3 && dims[1] != 6)) {
    throw Error(ErrorKind::Format, file.string() + ": .npy of shape " + shape.substr(open, close - open + 1) +
                                       "; point clouds are [N, 3] or [N, 6]");
  }
  check_count(dims[0], file);
  const uint64_t width = type[2] == '4' ? 4 : 8;
  const uint64_t body = start + header_len;
  if (dims[0] > (data.size() - body) / (dims[1] * width)) throw bad("holds fewer values than its shape says");
  const bool swap = (type[0] == '>') != (std::endian::native == std::endian::big);
  const Property prop{"", static_cast<int>(width), 'f'};
  Cloud c;
  c.size = static_cast<int64_t>(dims[0]);
  c.xyz.resize(dims[0] * 3);
  if (dims[1] == 6) c.rgb.resize(dims[0] * 3);
  for (uint64_t r = 0; r < dims[0]; ++r) {
    for (uint64_t a = 0; a < dims[1]; ++a) {
      const double v = read_scalar(data.data() + body + (r * dims[1] + a) * width, prop, swap);
      if (a < 3) c.xyz[r * 3 + a] = static_cast<float>(v);
      else c.rgb[r * 3 + a - 3] = static_cast<float>(std::clamp(v, 0.0, 1.0));
    }
  }
  return c;
}

}  // namespace

std::vector<std::string> cloud_extensions() { return {"ply", "xyz", "npy"}; }

Cloud read_cloud(const std::filesystem::path& file) {
  const auto ext = lower(file.extension().string());
  Cloud c;
  if (ext == ".ply") c = read_ply(file);
  else if (ext == ".xyz") c = read_xyz(file);
  else if (ext == ".npy") c = read_npy(file);
  else throw Error(ErrorKind::Unsupported, file.string() + ": not a point cloud file (.ply, .xyz or .npy)");
  check_finite(c, file);
  return c;
}

void write_ply(const std::filesystem::path& file, const Cloud& cloud) {
  const bool colours = !cloud.rgb.empty();
  std::string out = "ply\nformat binary_little_endian 1.0\ncomment made by lego's pointcloud plugin\nelement vertex " +
                    std::to_string(cloud.size) + "\nproperty float x\nproperty float y\nproperty float z\n";
  if (colours) out += "property uchar red\nproperty uchar green\nproperty uchar blue\n";
  out += "end_header\n";
  for (int64_t i = 0; i < cloud.size; ++i) {
    for (int a = 0; a < 3; ++a) {
      const auto bits = std::bit_cast<uint32_t>(cloud.xyz[static_cast<size_t>(i * 3 + a)]);
      for (int b = 0; b < 4; ++b) out.push_back(static_cast<char>((bits >> (8 * b)) & 0xff));
    }
    if (colours) {
      for (int a = 0; a < 3; ++a) {
        const float v = std::clamp(cloud.rgb[static_cast<size_t>(i * 3 + a)], 0.0f, 1.0f);
        out.push_back(static_cast<char>(static_cast<uint8_t>(std::lround(v * 255.0f))));
      }
    }
  }
  lego::write_file_atomically(file, out);
}

}  // namespace pointcloud
