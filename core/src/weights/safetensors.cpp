// safetensors reading (mmap, validated header) and atomic writing.
// Format: 8-byte little-endian header length N, N bytes of JSON {name: {dtype, shape, data_offsets}},
// then the data region; offsets are relative to the data region.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <limits>
#include <set>
#include <unordered_map>

#include "lego/sdk/error.h"
#include "lego/weights/tensor_source.h"
#include "lego/fs/atomic_file.h"

namespace lego::weights {
namespace {

// A larger header is refused rather than parsed (the reference implementation caps it at 100 MB).
constexpr uint64_t kMaxHeaderBytes = 100ull << 20;

struct DtypeName {
  const char* name;
  at::ScalarType dtype;
};
constexpr DtypeName kDtypes[] = {
    {"F64", at::kDouble},        {"F32", at::kFloat},          {"F16", at::kHalf},
    {"BF16", at::kBFloat16},     {"I64", at::kLong},           {"I32", at::kInt},
    {"I16", at::kShort},         {"I8", at::kChar},            {"U8", at::kByte},
    {"BOOL", at::kBool},         {"U16", at::kUInt16},         {"U32", at::kUInt32},
    {"U64", at::kUInt64},        {"F8_E4M3", at::kFloat8_e4m3fn}, {"F8_E5M2", at::kFloat8_e5m2},
};

// A private, copy-on-write mapping of a whole file; tensors keep it alive through their deleters.
class Mapping {
 public:
  explicit Mapping(const std::filesystem::path& file) {
    fd_ = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd_ < 0) {
      const auto kind = errno == ENOENT ? ErrorKind::NotFound : ErrorKind::Io;
      throw Error(kind, file.string() + ": cannot open: " + std::strerror(errno));
    }
    struct stat st {};
    if (::fstat(fd_, &st) != 0) {
      ::close(fd_);
      throw Error(ErrorKind::Io, file.string() + ": cannot stat: " + std::strerror(errno));
    }
    size_ = static_cast<size_t>(st.st_size);
    if (size_ > 0) {
      void* p = ::mmap(nullptr, size_, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd_, 0);
      if (p == MAP_FAILED) {
        ::close(fd_);
        throw Error(ErrorKind::Io, file.string() + ": cannot map: " + std::strerror(errno));
      }
      data_ = static_cast<uint8_t*>(p);
    }
  }
  ~Mapping() {
    if (data_ != nullptr) ::munmap(data_, size_);
    if (fd_ >= 0) ::close(fd_);
  }
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;

  uint8_t* data() const { return data_; }
  size_t size() const { return size_; }

 private:
  int fd_ = -1;
  uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

struct Entry {
  TensorInfo info;
  uint64_t begin = 0;
  uint64_t end = 0;
};

class SafetensorsSource : public TensorSource {
 public:
  explicit SafetensorsSource(const std::filesystem::path& file) : file_(file), map_(std::make_shared<Mapping>(file)) {
    parse();
  }

  std::vector<std::string> names() const override {
    std::vector<std::string> out;
    out.reserve(entries_.size());
    for (const auto& [name, e] : entries_) out.push_back(name);
    std::sort(out.begin(), out.end());
    return out;
  }
  bool contains(const std::string& name) const override { return entries_.count(name) != 0; }
  TensorInfo info(const std::string& name) const override { return entry(name).info; }
  std::string describe() const override { return file_.string(); }

  at::Tensor get(const std::string& name) const override {
    const Entry& e = entry(name);
    const auto options = at::TensorOptions().dtype(e.info.dtype).device(at::kCPU);
    if (e.end == e.begin) return at::empty(e.info.shape, options);
    uint8_t* p = map_->data() + data_start_ + e.begin;
    const auto align = static_cast<uintptr_t>(c10::elementSize(e.info.dtype));
    auto keep = map_;
    auto tensor = at::from_blob(p, e.info.shape, [keep](void*) {}, options);
    // Misaligned data would break vectorised kernels: such a tensor gets its own aligned copy.
    if (reinterpret_cast<uintptr_t>(p) % align != 0) return tensor.clone();
    return tensor;
  }

 private:
  const Entry& entry(const std::string& name) const {
    auto it = entries_.find(name);
    if (it == entries_.end()) {
      throw Error(ErrorKind::NotFound, file_.string() + ": no tensor '" + name + "'");
    }
    return it->second;
  }

  [[noreturn]] void fail(const std::string& what) const {
    throw Error(ErrorKind::Format, file_.string() + ": " + what);
  }

  void parse() {
    const size_t size = map_->size();
    if (size < 8) fail("truncated: " + std::to_string(size) + " bytes, too short for the 8-byte header length");
    uint64_t header_len = 0;
    std::memcpy(&header_len, map_->data(), 8);  // little-endian on every platform we build for
    if (header_len > size - 8) {
      fail("header length " + std::to_string(header_len) + " runs past the end of the file (" +
           std::to_string(size) + " bytes)");
    }
    if (header_len > kMaxHeaderBytes) fail("header length " + std::to_string(header_len) + " is too large");
    data_start_ = 8 + header_len;
    const uint64_t data_size = size - data_start_;
    const char* text = reinterpret_cast<const char*>(map_->data() + 8);

    // Duplicate names would silently shadow each other in a JSON object: refuse them while parsing.
    std::set<std::string> top_keys;
    std::string duplicate;
    nlohmann::json::parser_callback_t on_event = [&](int depth, nlohmann::json::parse_event_t event,
                                                     nlohmann::json& parsed) {
      if (event == nlohmann::json::parse_event_t::key && depth == 1 && parsed.is_string()) {
        if (!top_keys.insert(parsed.get<std::string>()).second && duplicate.empty()) {
          duplicate = parsed.get<std::string>();
        }
      }
      return true;
    };
    nlohmann::json header;
    try {
      header = nlohmann::json::parse(text, text + header_len, on_event);
    } catch (const nlohmann::json::exception& e) {
      fail(std::string("header is not valid JSON: ") + e.what());
    }
    if (!duplicate.empty()) fail("tensor '" + duplicate + "' appears twice in the header");
    if (!header.is_object()) fail("header is not a JSON object");

    std::vector<const Entry*> by_offset;
    for (auto it = header.begin(); it != header.end(); ++it) {
      if (it.key() == "__metadata__") continue;
      const std::string& name = it.key();
      const auto& v = it.value();
      auto bad = [&](const std::string& what) { fail("tensor '" + name + "': " + what); };
      if (!v.is_object()) bad("entry is not an object");
      if (!v.contains("dtype") || !v["dtype"].is_string()) bad("missing dtype");
      if (!v.contains("shape") || !v["shape"].is_array()) bad("missing shape");
      if (!v.contains("data_offsets") || !v["data_offsets"].is_array() || v["data_offsets"].size() != 2) {
        bad("data_offsets must be [begin, end]");
      }
      Entry e;
      e.info.name = name;
      e.info.file = file_;
      try {
        e.info.dtype = dtype_from_safetensors(v["dtype"].get<std::string>());
      } catch (const Error& err) {
        throw Error(ErrorKind::Unsupported, file_.string() + ": tensor '" + name + "': " + err.what());
      }
      uint64_t numel = 1;
      for (const auto& d : v["shape"]) {
        if (!d.is_number_unsigned()) bad("shape entries must be non-negative integers");
        const auto dim = d.get<uint64_t>();
        if (dim > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) ||
            (dim != 0 && numel > std::numeric_limits<uint64_t>::max() / dim)) {
          bad("shape overflows");
        }
        numel *= dim;
        e.info.shape.push_back(static_cast<int64_t>(dim));
      }
      const auto& off = v["data_offsets"];
      if (!off[0].is_number_unsigned() || !off[1].is_number_unsigned()) bad("data_offsets must be integers");
      e.begin = off[0].get<uint64_t>();
      e.end = off[1].get<uint64_t>();
      if (e.begin > e.end) bad("data_offsets begin " + std::to_string(e.begin) + " > end " + std::to_string(e.end));
      if (e.end > data_size) {
        bad("data_offsets end " + std::to_string(e.end) + " is past the data region of " +
            std::to_string(data_size) + " bytes (truncated file?)");
      }
      const uint64_t elem = c10::elementSize(e.info.dtype);
      if (numel > std::numeric_limits<uint64_t>::max() / elem || numel * elem != e.end - e.begin) {
        bad("holds " + std::to_string(e.end - e.begin) + " bytes but its shape and dtype need " +
            std::to_string(numel) + " x " + std::to_string(elem));
      }
      entries_.emplace(name, std::move(e));
    }
    for (const auto& [name, e] : entries_) {
      if (e.end > e.begin) by_offset.push_back(&e);
    }
    std::sort(by_offset.begin(), by_offset.end(), [](const Entry* a, const Entry* b) { return a->begin < b->begin; });
    for (size_t i = 1; i < by_offset.size(); ++i) {
      if (by_offset[i]->begin < by_offset[i - 1]->end) {
        fail("tensors '" + by_offset[i - 1]->info.name + "' and '" + by_offset[i]->info.name +
             "' overlap in the data region");
      }
    }
  }

  std::filesystem::path file_;
  std::shared_ptr<Mapping> map_;
  uint64_t data_start_ = 0;
  std::unordered_map<std::string, Entry> entries_;
};

}  // namespace

at::ScalarType dtype_from_safetensors(const std::string& name) {
  for (const auto& d : kDtypes) {
    if (name == d.name) return d.dtype;
  }
  throw Error(ErrorKind::Unsupported, "unknown safetensors dtype '" + name + "'");
}

std::string dtype_to_safetensors(at::ScalarType dtype) {
  for (const auto& d : kDtypes) {
    if (dtype == d.dtype) return d.name;
  }
  throw Error(ErrorKind::Unsupported, std::string("dtype ") + c10::toString(dtype) + " has no safetensors name");
}

std::unique_ptr<TensorSource> open_safetensors(const std::filesystem::path& file) {
  return std::make_unique<SafetensorsSource>(file);
}

void write_safetensors_streamed(const std::filesystem::path& file, const std::vector<TensorSpec>& specs,
                                const std::function<at::Tensor(size_t)>& produce,
                                const std::map<std::string, std::string>& metadata) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::set<std::string> seen;
  uint64_t offset = 0;
  for (const auto& spec : specs) {
    if (!seen.insert(spec.name).second) {
      throw Error(ErrorKind::InvalidArgument, file.string() + ": tensor '" + spec.name + "' given twice");
    }
    uint64_t bytes = c10::elementSize(spec.dtype);
    for (const auto d : spec.shape) {
      if (d < 0) throw Error(ErrorKind::InvalidArgument, file.string() + ": tensor '" + spec.name + "' has a negative size");
      bytes *= static_cast<uint64_t>(d);
    }
    header[spec.name] = {{"dtype", dtype_to_safetensors(spec.dtype)},
                         {"shape", spec.shape},
                         {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // keeps the data region 8-byte aligned
  fs::AtomicFile out(file);
  const uint64_t len = text.size();
  out.write(&len, 8);
  out.write(text.data(), text.size());
  for (size_t i = 0; i < specs.size(); ++i) {
    const auto t = produce(i).contiguous();
    if (!t.device().is_cpu() || t.scalar_type() != specs[i].dtype || t.sizes().vec() != specs[i].shape) {
      throw Error(ErrorKind::InvalidArgument, file.string() + ": tensor '" + specs[i].name + "' was made as " +
                                           std::string(c10::toString(t.scalar_type())) + " " +
                                           shape_string(t.sizes().vec()) + " on " + t.device().str() +
                                           ", its header promised " + dtype_to_safetensors(specs[i].dtype) + " " +
                                           shape_string(specs[i].shape) + " on the CPU");
    }
    out.write(t.data_ptr(), t.nbytes());
  }
  out.commit();
}

void write_safetensors(const std::filesystem::path& file,
                       const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  std::vector<TensorSpec> specs;
  specs.reserve(tensors.size());
  for (const auto& [name, t] : tensors) specs.push_back({name, t.scalar_type(), t.sizes().vec()});
  write_safetensors_streamed(file, specs, [&](size_t i) { return tensors[i].second.detach().to(at::kCPU); }, metadata);
}

bool populate(const at::Tensor& tensor) {
#ifdef MADV_POPULATE_READ
  if (!tensor.defined() || !tensor.is_cpu() || tensor.nbytes() == 0) return false;
  const auto page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const auto data = reinterpret_cast<uintptr_t>(tensor.data_ptr());
  const auto begin = data / page * page;
  const auto end = (data + tensor.nbytes() + page - 1) / page * page;
  // An error (an older kernel) leaves the pages to fault when they are first read.
  return ::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_POPULATE_READ) == 0;
#else
  (void)tensor;
  return false;
#endif
}

}  // namespace lego::weights
