#include "lego/grounding/grounding.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <regex>
#include <string_view>

#include "lego/sdk/error.h"

namespace lego::grounding {
namespace {

double clip01(double v) { return std::clamp(v, 0.0, 1.0); }

// Number as models write it: optional sign, digits with an optional fraction, or a bare fraction.
const char* kNumber = R"(\s*([-+]?(?:\d+(?:\.\d*)?|\.\d+))\s*)";

std::string trim(std::string_view s) {
  const auto b = s.find_first_not_of(" \t\r\n");
  if (b == std::string_view::npos) return "";
  const auto e = s.find_last_not_of(" \t\r\n");
  return std::string(s.substr(b, e - b + 1));
}

// Only separators between two mentions: they then share a phrase.
bool only_separators(std::string_view s) {
  std::string rest = trim(s);
  while (!rest.empty()) {
    if (rest.front() == ',' || rest.front() == ';') {
      rest = trim(std::string_view(rest).substr(1));
    } else if (rest.rfind("and", 0) == 0 && (rest.size() == 3 || rest[3] == ' ')) {
      rest = trim(std::string_view(rest).substr(3));
    } else {
      return false;
    }
  }
  return true;
}

// The phrase of a mention starting at `begin`: text since the previous mention or sentence boundary.
std::string phrase_before(std::string_view text, size_t from, size_t begin) {
  std::string_view gap = text.substr(from, begin - from);
  const auto cut = gap.find_last_of(".!?\n");
  // A '.' inside a number ("3.5") is no boundary; mentions end at their bracket, so this is rare.
  if (cut != std::string_view::npos) gap = gap.substr(cut + 1);
  std::string p = trim(gap);
  while (!p.empty() && (p.back() == ',' || p.back() == ':' || p.back() == ';')) p = trim(p.substr(0, p.size() - 1));
  return p;
}

// Digits as matched by kNumber. strtod, not stod: a number too large or too small for a double (a model may
// write a hundred digits) becomes +-inf or 0, which clipping turns into 1 or 0, instead of throwing.
double to_double(const std::ssub_match& m) { return std::strtod(m.str().c_str(), nullptr); }

// Mentions are short ("[0.128, 0.565, 0.204, 0.720]"), and libstdc++'s regex recurses once per character it
// matches: a long run of digits or spaces after a bracket overflowed the stack. So only a bracket and the
// text up to the first closing bracket within kMaxMentionBytes are matched, as a whole.
constexpr size_t kMaxMentionBytes = 1024;

// Calls on_match(begin, end, match) for each `open` ... `close` mention of `re` in `s`, left to right.
template <typename OnMatch>
void for_each_mention(const std::string& s, char open, char close, const std::regex& re, OnMatch&& on_match) {
  const std::string_view all(s);
  for (size_t begin = all.find(open); begin != std::string_view::npos;) {
    const size_t close_at = all.substr(begin + 1, kMaxMentionBytes).find(close);
    std::smatch m;
    if (close_at != std::string_view::npos) {
      const size_t end = begin + 1 + close_at + 1;
      if (std::regex_match(s.begin() + static_cast<std::ptrdiff_t>(begin), s.begin() + static_cast<std::ptrdiff_t>(end),
                           m, re)) {
        on_match(begin, end, m);
        begin = all.find(open, end);
        continue;
      }
    }
    begin = all.find(open, begin + 1);
  }
}

}  // namespace

std::string format_box(const Box& b) {
  char buf[96];
  std::snprintf(buf, sizeof buf, "[%.3f, %.3f, %.3f, %.3f]", b.x1, b.y1, b.x2, b.y2);
  return buf;
}

std::string format_span(const Span& s) {
  char buf[48];
  std::snprintf(buf, sizeof buf, "{%.2f, %.2f}", s.t1, s.t2);
  return buf;
}

namespace {

void check_box_values(const std::vector<double>& v, const char* what) {
  if (v.size() != 4 && v.size() != 6) {
    throw Error(ErrorKind::InvalidArgument, std::string(what) + ": a box has 4 or 6 values (min corner, then max "
                                            "corner), not " + std::to_string(v.size()));
  }
  for (const double x : v) {
    if (!std::isfinite(x)) throw Error(ErrorKind::InvalidArgument, std::string(what) + ": a box value is not finite");
  }
}

}  // namespace

std::string format_box_values(const std::vector<double>& values) {
  check_box_values(values, "format_box_values");
  std::string out = "[";
  char buf[48];
  for (size_t i = 0; i < values.size(); ++i) {
    std::snprintf(buf, sizeof buf, i == 0 ? "%.3f" : ", %.3f", values[i]);
    out += buf;
  }
  return out + "]";
}

double box_iou(const std::vector<double>& a, const std::vector<double>& b) {
  check_box_values(a, "box_iou");
  check_box_values(b, "box_iou");
  if (a.size() != b.size()) {
    throw Error(ErrorKind::InvalidArgument, "box_iou: boxes of " + std::to_string(a.size()) + " and " +
                                                std::to_string(b.size()) + " values");
  }
  const size_t axes = a.size() / 2;
  double inter = 1, va = 1, vb = 1;
  for (size_t i = 0; i < axes; ++i) {
    inter *= std::max(0.0, std::min(a[axes + i], b[axes + i]) - std::max(a[i], b[i]));
    va *= std::max(0.0, a[axes + i] - a[i]);
    vb *= std::max(0.0, b[axes + i] - b[i]);
  }
  const double uni = va + vb - inter;
  return uni > 0 ? inter / uni : 0.0;
}

Mentions parse(std::string_view text) {
  // Four values, or six for a 3-D box.
  static const std::regex box_re(std::string(R"(\[)") + kNumber + "," + kNumber + "," + kNumber + "," + kNumber +
                                 "(?:," + kNumber + "," + kNumber + ")?" + R"(\])");
  static const std::regex span_re(std::string(R"(\{)") + kNumber + "," + kNumber + R"(\})");
  struct Hit {
    size_t begin, end;
    bool is_box;
    std::vector<double> v;
  };
  std::vector<Hit> hits;
  const std::string s(text);
  for_each_mention(s, '[', ']', box_re, [&](size_t begin, size_t end, const std::smatch& m) {
    std::vector<double> v;
    for (size_t g = 1; g < m.size() && m[g].matched; ++g) v.push_back(to_double(m[g]));
    hits.push_back({begin, end, true, v});
  });
  for_each_mention(s, '{', '}', span_re, [&](size_t begin, size_t end, const std::smatch& m) {
    hits.push_back({begin, end, false, {to_double(m[1]), to_double(m[2])}});
  });
  std::sort(hits.begin(), hits.end(), [](const Hit& a, const Hit& b) { return a.begin < b.begin; });

  Mentions out;
  size_t prev_end = 0;
  std::string prev_phrase;
  bool have_prev = false;
  for (const auto& h : hits) {
    std::string phrase;
    if (have_prev && only_separators(text.substr(prev_end, h.begin - prev_end))) {
      phrase = prev_phrase;
    } else {
      phrase = phrase_before(text, prev_end, h.begin);
    }
    if (h.is_box) {
      const size_t axes = h.v.size() / 2;
      std::vector<double> v(h.v.size());
      for (size_t a = 0; a < axes; ++a) {
        v[a] = clip01(std::min(h.v[a], h.v[a + axes]));
        v[a + axes] = clip01(std::max(h.v[a], h.v[a + axes]));
      }
      const Box b = v.size() == 4 ? Box{v[0], v[1], v[2], v[3]} : Box{};
      out.boxes.push_back({phrase, v, b, h.begin, h.end});
    } else {
      Span sp{clip01(std::min(h.v[0], h.v[1])), clip01(std::max(h.v[0], h.v[1]))};
      out.spans.push_back({phrase, sp, h.begin, h.end});
    }
    prev_end = h.end;
    prev_phrase = phrase;
    have_prev = true;
  }
  return out;
}

}  // namespace lego::grounding
