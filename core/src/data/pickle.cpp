#include "lego/data/pickle.h"

#include <nlohmann/json.hpp>

#include <bit>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <utility>
#include <vector>

#include "lego/sdk/error.h"
#include "lego/sdk/files.h"

namespace lego::data {
namespace {

// A value on the unpickler's stack. Containers are shared: the memo and the stack refer to the same
// object, as in Python, so items set after a container was memoised are seen through every reference.
struct Node {
  enum class Kind { kNone, kBool, kInt, kFloat, kText, kList, kTuple, kDict, kMark };
  Kind kind = Kind::kNone;
  bool flag = false;
  int64_t integer = 0;
  double number = 0;
  std::string text;
  std::vector<std::shared_ptr<Node>> items;                                     // list, tuple
  std::vector<std::pair<std::shared_ptr<Node>, std::shared_ptr<Node>>> entries;  // dict, in order

  Node() = default;
  Node(const Node&) = delete;
  Node& operator=(const Node&) = delete;
  // Children are released one at a time, not recursively: a pickle of lists nested a million deep would
  // otherwise overflow the stack while it is freed.
  ~Node() {
    std::vector<std::shared_ptr<Node>> pending;
    auto collect = [&pending](Node& n) {
      for (auto& item : n.items) pending.push_back(std::move(item));
      for (auto& [key, value] : n.entries) {
        pending.push_back(std::move(key));
        pending.push_back(std::move(value));
      }
      n.items.clear();
      n.entries.clear();
    };
    collect(*this);
    while (!pending.empty()) {
      auto n = std::move(pending.back());
      pending.pop_back();
      if (n && n.use_count() == 1) collect(*n);
    }
  }
};
using NodePtr = std::shared_ptr<Node>;

NodePtr make(Node::Kind kind) {
  auto n = std::make_shared<Node>();
  n->kind = kind;
  return n;
}

// Bytes that are valid UTF-8 stay; otherwise every byte is read as Latin-1 (Python 2 `str`).
std::string to_utf8(std::string_view bytes) {
  size_t i = 0;
  bool valid = true;
  while (i < bytes.size() && valid) {
    const auto c = static_cast<unsigned char>(bytes[i]);
    const size_t len = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xe ? 3 : (c >> 3) == 0x1e ? 4 : 0;
    if (len == 0 || i + len > bytes.size()) valid = false;
    for (size_t k = 1; valid && k < len; ++k) valid = (static_cast<unsigned char>(bytes[i + k]) >> 6) == 0x2;
    i += len;
  }
  if (valid) return std::string(bytes);
  std::string out;
  for (const char ch : bytes) {
    const auto c = static_cast<unsigned char>(ch);
    if (c < 0x80) {
      out.push_back(ch);
    } else {
      out.push_back(static_cast<char>(0xc0 | (c >> 6)));
      out.push_back(static_cast<char>(0x80 | (c & 0x3f)));
    }
  }
  return out;
}

class Unpickler {
 public:
  Unpickler(std::string_view bytes, const std::string& source) : p_(bytes), source_(source) {}

  NodePtr run() {
    while (true) {
      if (at_ >= p_.size()) fail("ends without a STOP opcode");
      op_at_ = at_;
      const auto op = static_cast<uint8_t>(p_[at_++]);
      if (op == '.') {
        if (stack_.size() != 1 || !marks_.empty()) fail("STOP with " + std::to_string(stack_.size()) + " values on the stack");
        return stack_.back();
      }
      step(op);
    }
  }

 private:
  [[noreturn]] void fail(const std::string& why) const {
    throw Error(ErrorKind::Format, source_ + ": not a pickle of plain data (byte " + std::to_string(op_at_) + "): " + why);
  }

  std::string_view take(uint64_t n) {
    if (n > p_.size() - at_) fail("declares " + std::to_string(n) + " bytes with only " + std::to_string(p_.size() - at_) + " left");
    const auto s = p_.substr(at_, static_cast<size_t>(n));
    at_ += static_cast<size_t>(n);
    return s;
  }
  uint64_t little(size_t n) {
    const auto b = take(n);
    uint64_t v = 0;
    for (size_t k = 0; k < n; ++k) v |= uint64_t{static_cast<uint8_t>(b[k])} << (8 * k);
    return v;
  }
  std::string_view line() {
    const auto nl = p_.find('\n', at_);
    if (nl == std::string_view::npos) fail("a text argument has no end of line");
    const auto s = p_.substr(at_, nl - at_);
    at_ = nl + 1;
    return s;
  }

  NodePtr pop() {
    if (stack_.empty() || (!marks_.empty() && stack_.size() == marks_.back())) fail("pops an empty stack");
    auto v = std::move(stack_.back());
    stack_.pop_back();
    return v;
  }
  NodePtr& top() {
    if (stack_.empty()) fail("uses an empty stack");
    return stack_.back();
  }
  // The values above the last mark, removing them and the mark.
  std::vector<NodePtr> pop_mark() {
    if (marks_.empty()) fail("no MARK to pop to");
    const size_t from = marks_.back();
    marks_.pop_back();
    std::vector<NodePtr> out(std::make_move_iterator(stack_.begin() + static_cast<std::ptrdiff_t>(from)),
                             std::make_move_iterator(stack_.end()));
    stack_.resize(from);
    return out;
  }
  void push(NodePtr n) { stack_.push_back(std::move(n)); }
  void push_int(int64_t v) {
    auto n = make(Node::Kind::kInt);
    n->integer = v;
    push(std::move(n));
  }
  void push_text(std::string_view bytes) {
    auto n = make(Node::Kind::kText);
    n->text = to_utf8(bytes);
    push(std::move(n));
  }
  void put(uint64_t key) { memo_[key] = top(); }
  void get(uint64_t key) {
    const auto it = memo_.find(key);
    if (it == memo_.end()) fail("refers to memo entry " + std::to_string(key) + ", which was never stored");
    push(it->second);
  }
  uint64_t decimal(std::string_view s) {
    uint64_t v = 0;
    const auto r = std::from_chars(s.data(), s.data() + s.size(), v);
    if (r.ec != std::errc() || r.ptr != s.data() + s.size()) fail("'" + std::string(s) + "' is not a memo index");
    return v;
  }
  void add_items(const NodePtr& target, std::vector<NodePtr> values) {
    if (target->kind != Node::Kind::kList) fail("appends to a value that is not a list");
    for (auto& v : values) target->items.push_back(std::move(v));
  }
  void set_items(const NodePtr& target, std::vector<NodePtr> values) {
    if (target->kind != Node::Kind::kDict) fail("sets items of a value that is not a dict");
    if (values.size() % 2 != 0) fail("sets items from an odd number of values");
    for (size_t k = 0; k < values.size(); k += 2) target->entries.emplace_back(std::move(values[k]), std::move(values[k + 1]));
  }
  NodePtr tuple(std::vector<NodePtr> values) {
    auto n = make(Node::Kind::kTuple);
    n->items = std::move(values);
    return n;
  }
  // Protocol 0's text literals: 'quoted' with backslash escapes (STRING), raw-unicode-escape (UNICODE).
  std::string unescape(std::string_view s, bool quoted) {
    if (quoted) {
      if (s.size() < 2 || (s.front() != '\'' && s.front() != '"') || s.back() != s.front()) fail("a STRING is not quoted");
      s = s.substr(1, s.size() - 2);
    }
    std::string out;
    auto append_code = [&out](uint32_t c) {
      if (c < 0x80) {
        out.push_back(static_cast<char>(c));
      } else if (c < 0x800) {
        out.push_back(static_cast<char>(0xc0 | (c >> 6)));
        out.push_back(static_cast<char>(0x80 | (c & 0x3f)));
      } else if (c < 0x10000) {
        out.push_back(static_cast<char>(0xe0 | (c >> 12)));
        out.push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3f)));
        out.push_back(static_cast<char>(0x80 | (c & 0x3f)));
      } else {
        out.push_back(static_cast<char>(0xf0 | (c >> 18)));
        out.push_back(static_cast<char>(0x80 | ((c >> 12) & 0x3f)));
        out.push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3f)));
        out.push_back(static_cast<char>(0x80 | (c & 0x3f)));
      }
    };
    auto hex = [&](size_t from, size_t n) {
      if (from + n > s.size()) fail("a text escape is cut short");
      uint32_t v = 0;
      const auto r = std::from_chars(s.data() + from, s.data() + from + n, v, 16);
      if (r.ec != std::errc() || r.ptr != s.data() + from + n || v > 0x10ffff) fail("a text escape is not hexadecimal");
      return v;
    };
    std::string raw;  // quoted STRING is bytes: collect them, then decode as to_utf8 does
    for (size_t i = 0; i < s.size(); ++i) {
      if (s[i] != '\\' || i + 1 >= s.size()) {
        // raw-unicode-escape keeps code points below 256 as single Latin-1 bytes.
        if (quoted) {
          raw.push_back(s[i]);
        } else {
          append_code(static_cast<uint8_t>(s[i]));
        }
        continue;
      }
      const char e = s[i + 1];
      if (!quoted && (e == 'u' || e == 'U')) {
        const size_t n = e == 'u' ? 4 : 8;
        append_code(hex(i + 2, n));
        i += 1 + n;
      } else if (quoted && e == 'x') {
        raw.push_back(static_cast<char>(hex(i + 2, 2)));
        i += 3;
      } else if (quoted) {
        const char* simple = "n\nt\tr\r\\\\''\"\"";
        bool done = false;
        for (size_t k = 0; simple[k] != 0; k += 2) {
          if (simple[k] == e) {
            raw.push_back(simple[k + 1]);
            done = true;
          }
        }
        if (!done) raw.append(s.substr(i, 2));
        ++i;
      } else {
        append_code(static_cast<uint8_t>(s[i]));
      }
    }
    return quoted ? to_utf8(raw) : out;
  }

  void step(uint8_t op) {
    using K = Node::Kind;
    switch (op) {
      case 0x80: little(1); return;               // PROTO
      case 0x95: little(8); return;               // FRAME: a size hint only
      case '(': marks_.push_back(stack_.size()); return;  // MARK
      case '0': pop(); return;                    // POP
      case '1': pop_mark(); return;               // POP_MARK
      case '2': push(top()); return;              // DUP
      case 'N': push(make(K::kNone)); return;
      case 0x88: case 0x89: {                     // NEWTRUE, NEWFALSE
        auto n = make(K::kBool);
        n->flag = op == 0x88;
        push(std::move(n));
        return;
      }
      case 'K': push_int(static_cast<int64_t>(little(1))); return;                       // BININT1
      case 'M': push_int(static_cast<int64_t>(little(2))); return;                       // BININT2
      case 'J': push_int(static_cast<int32_t>(static_cast<uint32_t>(little(4)))); return;  // BININT
      case 0x8a: case 0x8b: {                     // LONG1, LONG4: little-endian two's complement
        const uint64_t n = little(op == 0x8a ? 1 : 4);
        if (n > 8) fail("holds an integer wider than 64 bits");
        const auto b = take(n);
        uint64_t v = 0;
        for (size_t k = 0; k < n; ++k) v |= uint64_t{static_cast<uint8_t>(b[k])} << (8 * k);
        if (n > 0 && n < 8 && (static_cast<uint8_t>(b[n - 1]) & 0x80) != 0) v |= ~uint64_t{0} << (8 * n);
        push_int(static_cast<int64_t>(v));
        return;
      }
      case 'I': case 'L': {                       // INT, LONG: decimal text (INT 01/00 are True/False)
        auto s = line();
        if (op == 'I' && (s == "01" || s == "00")) {
          auto n = make(K::kBool);
          n->flag = s == "01";
          push(std::move(n));
          return;
        }
        if (op == 'L' && !s.empty() && s.back() == 'L') s.remove_suffix(1);
        int64_t v = 0;
        const auto r = std::from_chars(s.data(), s.data() + s.size(), v);
        if (r.ec != std::errc() || r.ptr != s.data() + s.size()) fail("'" + std::string(s) + "' is not a 64-bit integer");
        push_int(v);
        return;
      }
      case 'G': {                                 // BINFLOAT: big-endian double
        const auto b = take(8);
        uint64_t bits = 0;
        for (size_t k = 0; k < 8; ++k) bits = bits << 8 | static_cast<uint8_t>(b[k]);
        auto n = make(K::kFloat);
        n->number = std::bit_cast<double>(bits);
        push(std::move(n));
        return;
      }
      case 'F': {                                 // FLOAT: text
        const std::string s(line());
        char* end = nullptr;
        const double v = std::strtod(s.c_str(), &end);
        if (s.empty() || end != s.c_str() + s.size()) fail("'" + s + "' is not a number");
        auto n = make(K::kFloat);
        n->number = v;
        push(std::move(n));
        return;
      }
      case 'U': case 'C': case 0x8c: push_text(take(little(1))); return;  // SHORT_BINSTRING/BINBYTES/BINUNICODE
      case 'T': case 'B': case 'X': push_text(take(little(4))); return;   // BINSTRING, BINBYTES, BINUNICODE
      case 0x8d: case 0x8e: push_text(take(little(8))); return;           // BINUNICODE8, BINBYTES8
      case 'S': {
        auto n = make(K::kText);
        n->text = unescape(line(), true);
        push(std::move(n));
        return;
      }
      case 'V': {
        auto n = make(K::kText);
        n->text = unescape(line(), false);
        push(std::move(n));
        return;
      }
      case ']': push(make(K::kList)); return;
      case '}': push(make(K::kDict)); return;
      case ')': push(make(K::kTuple)); return;
      case 'l': {
        auto n = make(K::kList);
        n->items = pop_mark();
        push(std::move(n));
        return;
      }
      case 't': push(tuple(pop_mark())); return;
      case 0x85: case 0x86: case 0x87: {          // TUPLE1..3
        std::vector<NodePtr> v(static_cast<size_t>(op - 0x84));
        for (auto it = v.rbegin(); it != v.rend(); ++it) *it = pop();
        push(tuple(std::move(v)));
        return;
      }
      case 'd': {
        auto n = make(K::kDict);
        set_items(n, pop_mark());
        push(std::move(n));
        return;
      }
      case 'a': {                                 // APPEND
        auto v = pop();
        add_items(top(), {std::move(v)});
        return;
      }
      case 'e': {                                 // APPENDS
        auto values = pop_mark();
        add_items(top(), std::move(values));
        return;
      }
      case 's': {                                 // SETITEM
        auto value = pop();
        auto key = pop();
        set_items(top(), {std::move(key), std::move(value)});
        return;
      }
      case 'u': {                                 // SETITEMS
        auto values = pop_mark();
        set_items(top(), std::move(values));
        return;
      }
      case 'q': put(little(1)); return;           // BINPUT
      case 'r': put(little(4)); return;           // LONG_BINPUT
      case 'p': put(decimal(line())); return;     // PUT
      case 0x94: put(memo_.size()); return;       // MEMOIZE
      case 'h': get(little(1)); return;           // BINGET
      case 'j': get(little(4)); return;           // LONG_BINGET
      case 'g': get(decimal(line())); return;     // GET
      default: {
        char hex[8];
        std::snprintf(hex, sizeof hex, "0x%02x", op);
        fail(std::string("opcode ") + hex + " is not plain data (only dicts, lists, tuples, strings and numbers are read)");
      }
    }
  }

  std::string_view p_;
  const std::string& source_;
  size_t at_ = 0;
  size_t op_at_ = 0;
  std::vector<NodePtr> stack_;
  std::vector<size_t> marks_;
  std::map<uint64_t, NodePtr> memo_;
};

class JsonWriter {
 public:
  JsonWriter(const std::string& source, size_t budget) : source_(source), budget_(budget) {}

  nlohmann::json write(const Node& n, int depth) {
    constexpr int kMaxDepth = 200;
    if (depth > kMaxDepth) {
      throw Error(ErrorKind::Format, source_ + ": the pickle nests deeper than " + std::to_string(kMaxDepth) + " (does it refer to itself?)");
    }
    // Shared references could expand exponentially; the JSON may hold a bounded number of values.
    if (budget_ == 0) throw Error(ErrorKind::Format, source_ + ": the pickle expands to more values than its size allows");
    --budget_;
    using K = Node::Kind;
    switch (n.kind) {
      case K::kNone: return nullptr;
      case K::kBool: return n.flag;
      case K::kInt: return n.integer;
      case K::kFloat: return n.number;
      case K::kText: return n.text;
      case K::kList: case K::kTuple: {
        auto a = nlohmann::json::array();
        for (const auto& item : n.items) a.push_back(write(*item, depth + 1));
        return a;
      }
      case K::kDict: {
        auto o = nlohmann::json::object();
        for (const auto& [key, value] : n.entries) {
          std::string name;
          if (key->kind == K::kText) {
            name = key->text;
          } else if (key->kind == K::kInt) {
            name = std::to_string(key->integer);
          } else {
            throw Error(ErrorKind::Format, source_ + ": a dict key is neither text nor an integer");
          }
          o[name] = write(*value, depth + 1);
        }
        return o;
      }
      case K::kMark: break;
    }
    throw Error(ErrorKind::Format, source_ + ": unexpected value in the pickle");
  }

 private:
  const std::string& source_;
  size_t budget_;
};

}  // namespace

std::string pickle_to_json(std::string_view bytes, const std::string& source) {
  // At most one value per byte of pickle, each a Node and its shared_ptr control block.
  require_allocatable(static_cast<double>(bytes.size()) * (sizeof(Node) + 32), source);
  const auto root = Unpickler(bytes, source).run();
  // Each value in the pickle costs at least one byte; allow references to repeat them a few times over.
  JsonWriter writer(source, 4 * bytes.size() + 1024);
  return writer.write(*root, 0).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

}  // namespace lego::data
