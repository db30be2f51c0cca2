// Sharded indexes, PyTorch .bin archives, directory discovery and loading tensors into modules.
#include <ATen/ATen.h>
#include <c10/core/CPUAllocator.h>
#include <c10/util/Exception.h>
#include <nlohmann/json.hpp>
#include <zlib.h>
#include <caffe2/serialize/versions.h>
#include <torch/csrc/jit/serialization/unpickler.h>
#include <torch/csrc/jit/serialization/storage_context.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <limits>
#include <map>
#include <optional>
#include <sstream>
#include <unordered_map>

#include "lego/sdk/error.h"
#include "lego/sdk/files.h"
#include "lego/sdk/json.h"
#include "lego/weights/tensor_source.h"

namespace lego::weights {
namespace {

// Bytes of storage a tensor view reaches, (offset + extent) x item size, or nullopt when a size, stride
// or offset is negative or the product overflows.
std::optional<uint64_t> view_bytes(const at::Tensor& t) {
  if (t.numel() == 0) return 0;
  if (t.storage_offset() < 0) return std::nullopt;
  unsigned __int128 last = static_cast<uint64_t>(t.storage_offset());
  for (int64_t d = 0; d < t.dim(); ++d) {
    if (t.size(d) < 0 || t.stride(d) < 0) return std::nullopt;
    last += static_cast<unsigned __int128>(t.size(d) - 1) * static_cast<uint64_t>(t.stride(d));
  }
  const unsigned __int128 bytes = (last + 1) * t.element_size();
  if (bytes > std::numeric_limits<uint64_t>::max()) return std::nullopt;
  return static_cast<uint64_t>(bytes);
}

// Why the pickle `p` cannot be a torch.save state dict, or "" when every opcode is one torch's unpickler
// reads and every length it declares fits in what follows. The unpickler reserves a declared length before
// reading it, so a 3 KB file claiming a 4 GiB string cost 5 GB and 25 s before failing.
std::string pickle_problem(const uint8_t* p, size_t n) {
  auto fixed = [](uint8_t op) -> int {  // bytes of argument, or -1: length-prefixed/line/unknown
    switch (op) {
      case '(': case '.': case '0': case '2': case '1': case 'N': case 'R': case 'b': case 'a': case 'e':
      case 's': case 'u': case 't': case ')': case ']': case '}': case 'Q': case 'l': case 'd': case 0x85:
      case 0x86: case 0x87: case 0x88: case 0x89: case 0x81: case 0x94: case 0x8f: case 0x90: case 0x91:
      case 0x92: case 0x93: case 0x97: case 0x98:
        return 0;
      case 'K': case 'q': case 'h': case 0x80:
        return 1;
      case 'M':
        return 2;
      case 'J': case 'r': case 'j':
        return 4;
      case 'G':
        return 8;
      default:
        return -1;
    }
  };
  size_t i = 0;
  while (i < n) {
    const uint8_t op = p[i++];
    if (op == '.') return "";  // STOP
    const int arg = fixed(op);
    if (arg >= 0) {
      if (n - i < static_cast<size_t>(arg)) return "cut short";
      i += static_cast<size_t>(arg);
      continue;
    }
    uint64_t len = 0;
    size_t width = 0;
    switch (op) {
      case 'U': case 'C': case 0x8c: case 0x8a: width = 1; break;   // SHORT_BINSTRING/BYTES/UNICODE, LONG1
      case 'T': case 'X': case 'B': case 0x8b: width = 4; break;    // BINSTRING, BINUNICODE, BINBYTES, LONG4
      case 0x8d: case 0x8e: case 0x96: case 0x95: width = 8; break; // BINUNICODE8, BINBYTES8, BYTEARRAY8, FRAME
      case 'c': {  // GLOBAL: module and name, each ending in a newline
        for (int line = 0; line < 2; ++line) {
          const auto* nl = static_cast<const uint8_t*>(std::memchr(p + i, '\n', n - i));
          if (nl == nullptr) return "cut short";
          i = static_cast<size_t>(nl - p) + 1;
        }
        continue;
      }
      case 'I': case 'L': case 'F': case 'S': case 'V': case 'g': case 'p': case 'P': {  // text up to a newline
        const auto* nl = static_cast<const uint8_t*>(std::memchr(p + i, '\n', n - i));
        if (nl == nullptr) return "cut short";
        i = static_cast<size_t>(nl - p) + 1;
        continue;
      }
      default: {
        char hex[8];
        std::snprintf(hex, sizeof hex, "0x%02x", op);
        return std::string("holds pickle opcode ") + hex + ", which no state dict uses";
      }
    }
    if (n - i < width) return "cut short";
    for (size_t k = 0; k < width; ++k) len |= uint64_t{p[i + k]} << (8 * k);
    i += width;
    if (op == 0x95) continue;  // FRAME: a size hint, not data that follows inline
    if (len > n - i) {
      return "declares a " + std::to_string(len) + "-byte item with only " + std::to_string(n - i) + " bytes left";
    }
    i += static_cast<size_t>(len);
  }
  return "has no STOP opcode";
}

// An entry of a zip's central directory.
struct ZipEntry {
  std::string name;
  uint64_t method = 0, compressed = 0, size = 0, local_header = 0, crc = 0, flags = 0;
};

// Little-endian reads of a zip file, bounded by its size.
class ZipBytes {
 public:
  ZipBytes(const std::filesystem::path& file, uint64_t size) : in_(file, std::ios::binary), size_(size) {}
  std::optional<std::string> at(uint64_t offset, uint64_t n) {
    if (offset > size_ || n > size_ - offset) return std::nullopt;
    std::string b(static_cast<size_t>(n), '\0');
    in_.seekg(static_cast<std::streamoff>(offset));
    if (!in_.read(b.data(), static_cast<std::streamsize>(n))) return std::nullopt;
    return b;
  }
  static uint64_t u16(const std::string& b, size_t i) { return uint64_t{uint8_t(b[i])} | uint64_t{uint8_t(b[i + 1])} << 8; }
  static uint64_t u32(const std::string& b, size_t i) { return u16(b, i) | u16(b, i + 2) << 16; }
  static uint64_t u64(const std::string& b, size_t i) { return u32(b, i) | u32(b, i + 4) << 32; }
  uint64_t size() const { return size_; }
  bool read_into(uint64_t offset, void* out, uint64_t n) {
    if (offset > size_ || n > size_ - offset) return false;
    in_.seekg(static_cast<std::streamoff>(offset));
    return static_cast<bool>(in_.read(static_cast<char*>(out), static_cast<std::streamsize>(n)));
  }

 private:
  std::ifstream in_;
  uint64_t size_;
};

// The entries of the zip `file`, from its central directory (zip64 too), or nullopt when that directory
// is not where its end record says. libtorch's own listing aborts the process (a fatal enforce, not an
// exception) on an entry outside the archive's folder, so lego lists and checks first.
std::optional<std::vector<ZipEntry>> zip_entries(ZipBytes& zip) {
  const uint64_t size = zip.size();
  const uint64_t tail_len = std::min<uint64_t>(size, 22 + 65535);
  const auto tail = zip.at(size - tail_len, tail_len);
  if (!tail || tail->size() < 22) return std::nullopt;
  const auto eocd = tail->rfind(std::string("PK\x05\x06", 4));
  if (eocd == std::string::npos || eocd + 22 > tail->size()) return std::nullopt;
  uint64_t entries = ZipBytes::u16(*tail, eocd + 10), cd_size = ZipBytes::u32(*tail, eocd + 12),
           cd_offset = ZipBytes::u32(*tail, eocd + 16);
  if (entries == 0xFFFF || cd_size == 0xFFFFFFFF || cd_offset == 0xFFFFFFFF) {  // zip64
    if (eocd < 20 || tail->compare(eocd - 20, 4, std::string("PK\x06\x07", 4)) != 0) return std::nullopt;
    const auto rec = zip.at(ZipBytes::u64(*tail, eocd - 20 + 8), 56);
    if (!rec || rec->compare(0, 4, std::string("PK\x06\x06", 4)) != 0) return std::nullopt;
    entries = ZipBytes::u64(*rec, 32);
    cd_size = ZipBytes::u64(*rec, 40);
    cd_offset = ZipBytes::u64(*rec, 48);
  }
  if (cd_size > (uint64_t{1} << 28) || entries > cd_size / 46) return std::nullopt;
  const auto cd = zip.at(cd_offset, cd_size);
  if (!cd) return std::nullopt;
  std::vector<ZipEntry> out;
  size_t i = 0;
  for (uint64_t e = 0; e < entries; ++e) {
    if (i + 46 > cd->size() || cd->compare(i, 4, std::string("PK\x01\x02", 4)) != 0) return std::nullopt;
    const size_t name_len = ZipBytes::u16(*cd, i + 28), extra_len = ZipBytes::u16(*cd, i + 30);
    const size_t rest = extra_len + ZipBytes::u16(*cd, i + 32);
    if (i + 46 + name_len + rest > cd->size()) return std::nullopt;
    ZipEntry entry{cd->substr(i + 46, name_len), ZipBytes::u16(*cd, i + 10), ZipBytes::u32(*cd, i + 20),
                   ZipBytes::u32(*cd, i + 24), ZipBytes::u32(*cd, i + 42), ZipBytes::u32(*cd, i + 16),
                   ZipBytes::u16(*cd, i + 8)};
    // Sizes and offset of 0xFFFFFFFF live in the zip64 extra field, in this order, where they are so.
    for (size_t x = i + 46 + name_len, end = x + extra_len; x + 4 <= end;) {
      const uint64_t id = ZipBytes::u16(*cd, x), len = ZipBytes::u16(*cd, x + 2);
      if (x + 4 + len > end) break;
      if (id == 1) {
        size_t f = x + 4;
        for (uint64_t* field : {&entry.size, &entry.compressed, &entry.local_header}) {
          if (*field != 0xFFFFFFFF) continue;
          if (f + 8 > x + 4 + len) return std::nullopt;
          *field = ZipBytes::u64(*cd, f);
          f += 8;
        }
      }
      x += 4 + len;
    }
    out.push_back(std::move(entry));
    i += 46 + name_len + rest;
  }
  return out;
}

// Where a stored (uncompressed) entry's bytes start, or nullopt when it is compressed, encrypted or its
// local header or bytes lie outside the file.
std::optional<uint64_t> stored_data_offset(ZipBytes& zip, const ZipEntry& e) {
  if (e.method != 0 || e.size != e.compressed || (e.flags & 0x61) != 0) return std::nullopt;  // 0x61: encrypted, patched
  const auto header = zip.at(e.local_header, 30);
  if (!header || header->compare(0, 4, std::string("PK\x03\x04", 4)) != 0) return std::nullopt;
  const uint64_t data = e.local_header + 30 + ZipBytes::u16(*header, 26) + ZipBytes::u16(*header, 28);
  if (data > zip.size() || e.size > zip.size() - data) return std::nullopt;
  return data;
}

uint32_t crc32_of(const void* data, uint64_t n) {
  uLong crc = crc32(0L, Z_NULL, 0);
  const auto* p = static_cast<const Bytef*>(data);
  for (uint64_t done = 0; done < n;) {
    const auto chunk = static_cast<uInt>(std::min<uint64_t>(n - done, uint64_t{1} << 30));
    crc = crc32(crc, p + done, chunk);
    done += chunk;
  }
  return static_cast<uint32_t>(crc);
}

// Where a record's bytes start in the file, after checking that they are stored and inside it: called
// before anything is allocated for them.
uint64_t record_offset(ZipBytes& zip, const ZipEntry& e, const std::filesystem::path& file, const std::string& record) {
  const auto at = stored_data_offset(zip, e);
  if (!at) {
    throw Error(ErrorKind::Format, file.string() + ": record '" + record +
                                       "' is compressed, encrypted or lies outside the file (torch.save stores records as they are)");
  }
  return *at;
}

// A record's bytes, read into `out` (e.size bytes), checked against the directory's CRC-32.
void read_record_into(ZipBytes& zip, const ZipEntry& e, void* out, const std::filesystem::path& file,
                      const std::string& record) {
  const uint64_t at = record_offset(zip, e, file, record);
  if (!zip.read_into(at, out, e.size)) throw Error(ErrorKind::Io, file.string() + ": cannot read record '" + record + "'");
  if (crc32_of(out, e.size) != e.crc) {
    throw Error(ErrorKind::Format, file.string() + ": record '" + record + "' does not match its CRC-32 (the file is damaged)");
  }
}

// libtorch's reader parses the archive's format version (".data/version" where there is one, else
// "version") when it opens the file, and aborts the process, or lets std::out_of_range escape, on one
// that is not a number in its range. So it is read and checked here first.
uint64_t check_format_version(const std::filesystem::path& file, ZipBytes& zip, const std::vector<ZipEntry>& entries,
                              const std::string& folder) {
  const ZipEntry* record = nullptr;
  for (const char* name : {".data/version", "version"}) {
    for (const auto& e : entries) {
      if (record == nullptr && e.name == folder + name) record = &e;
    }
  }
  if (record == nullptr) throw Error(ErrorKind::Format, file.string() + ": no 'version' record (not a torch.save archive)");
  const std::string name = record->name.substr(folder.size());
  if (record->size > 64) throw Error(ErrorKind::Format, file.string() + ": record '" + name + "' is too long for a version");
  std::string bytes(static_cast<size_t>(record->size), '\0');
  read_record_into(zip, *record, bytes.data(), file, name);
  const auto b = bytes.find_first_not_of(" \t\r\n");
  const auto e = bytes.find_last_not_of(" \t\r\n");
  const std::string text = b == std::string::npos ? "" : bytes.substr(b, e - b + 1);
  const bool digits = !text.empty() && text.size() <= 9 && text.find_first_not_of("0123456789") == std::string::npos;
  const uint64_t version = digits ? std::stoull(text) : 0;
  if (version < caffe2::serialize::kMinSupportedFileFormatVersion || version > caffe2::serialize::kMaxSupportedFileFormatVersion) {
    throw Error(ErrorKind::Format, file.string() + ": record '" + name + "' holds '" + text +
                                       "', not a format version this libtorch reads (" +
                                       std::to_string(caffe2::serialize::kMinSupportedFileFormatVersion) + " to " +
                                       std::to_string(caffe2::serialize::kMaxSupportedFileFormatVersion) + ")");
  }
  return version;
}

// A state dict loaded whole from a `torch.save` zip archive. Each storage record is read once, at its real
// size, before the pickle is: torch's unpickler sizes a storage from the pickle's declared element count,
// not from the record, so a short or empty record would be read past its end. Every tensor is then checked
// to lie inside the storage it views.
class TorchBinSource : public TensorSource {
 public:
  explicit TorchBinSource(const std::filesystem::path& file) : file_(file) {
    std::error_code ec;
    const auto file_bytes = std::filesystem::file_size(file, ec);
    if (ec) throw Error(ErrorKind::NotFound, file.string() + ": cannot open: " + ec.message());
    ZipBytes zip(file, file_bytes);
    const auto magic = zip.at(0, 4);
    if (!magic || *magic != std::string("PK\x03\x04", 4)) {
      throw Error(ErrorKind::Format, file.string() + ": not a zip-format torch.save checkpoint (files of torch "
                                                     "< 1.6 are not read: load and save them again with a current torch)");
    }
    // Every entry must sit in one top folder (the archive's name), as torch.save writes them.
    const auto entries = zip_entries(zip);
    if (!entries || entries->empty()) throw Error(ErrorKind::Format, file.string() + ": not a readable zip archive");
    const auto slash = entries->front().name.find('/');
    const std::string folder = slash == std::string::npos ? "" : entries->front().name.substr(0, slash + 1);
    std::map<std::string, const ZipEntry*> records;  // by name inside the folder
    for (const auto& entry : *entries) {
      const auto& name = entry.name;
      if (folder.empty() || name.compare(0, folder.size(), folder) != 0 || name.size() == folder.size()) {
        throw Error(ErrorKind::Format, file.string() + ": entry '" + name + "' is outside the archive folder '" + folder + "'");
      }
      if (!records.emplace(name.substr(folder.size()), &entry).second) {
        throw Error(ErrorKind::Format, file.string() + ": entry '" + name + "' appears twice");
      }
    }
    const uint64_t version = check_format_version(file, zip, *entries, folder);
    // The records are read here, not by libtorch's archive reader: it aborts the process (fatal
    // enforces) on several kinds of damage, so lego reads the zip itself and only unpickles with libtorch.
    auto storages = std::make_shared<torch::jit::DeserializationStorageContext>();
    for (const auto& [record, entry] : records) {
      if (record.rfind("data/", 0) != 0 || record.size() == 5) continue;
      (void)record_offset(zip, *entry, file, record);  // its size is checked against the file before it is allocated
      require_allocatable(static_cast<double>(entry->size), file.string() + ": record '" + record + "'");
      at::DataPtr data = c10::GetCPUAllocator()->allocate(static_cast<size_t>(entry->size));
      read_record_into(zip, *entry, data.get(), file, record);
      storages->addStorage(record.substr(5), c10::Storage(c10::Storage::use_byte_size_t(), static_cast<size_t>(entry->size),
                                                          std::move(data), /*allocator=*/nullptr, /*resizable=*/false));
    }
    const auto pkl = records.find("data.pkl");
    if (pkl == records.end()) throw Error(ErrorKind::Format, file.string() + ": no data.pkl record");
    (void)record_offset(zip, *pkl->second, file, "data.pkl");
    std::string pickle(static_cast<size_t>(pkl->second->size), '\0');
    read_record_into(zip, *pkl->second, pickle.data(), file, "data.pkl");
    const auto problem = pickle_problem(reinterpret_cast<const uint8_t*>(pickle.data()), pickle.size());
    if (!problem.empty()) throw Error(ErrorKind::Format, file.string() + ": data.pkl " + problem);
    c10::IValue value;
    try {
      size_t offset = 0;
      auto reader = [&pickle, &offset](char* buffer, size_t len) -> size_t {
        len = std::min(len, pickle.size() - offset);
        std::memcpy(buffer, pickle.data() + offset, len);
        offset += len;
        return len;
      };
      // Every storage the pickle names was read above: one that is not a record is an error.
      auto missing = [&file](const std::string& key) -> at::DataPtr {
        throw Error(ErrorKind::Format, file.string() + ": data.pkl refers to storage '" + key + "', which is not a record");
      };
      torch::jit::Unpickler unpickler(reader, nullptr, nullptr, missing, at::Device(at::kCPU), false,
                                      torch::jit::Unpickler::defaultTypeParser, storages);
      unpickler.set_version(version);
      value = unpickler.parse_ivalue();
    } catch (const c10::Error& e) {
      throw Error(ErrorKind::Format, file.string() + ": not a readable PyTorch checkpoint: " +
                                         e.what_without_backtrace());
    }
    if (!value.isGenericDict()) throw Error(ErrorKind::Format, file.string() + ": does not hold a state dict");
    for (const auto& item : value.toGenericDict()) {
      if (!item.key().isString() || !item.value().isTensor()) {
        throw Error(ErrorKind::Format, file.string() + ": state dict entries must map names to tensors");
      }
      const auto& name = item.key().toStringRef();
      const at::Tensor t = item.value().toTensor();
      const auto need = view_bytes(t);
      const uint64_t have = t.storage().nbytes();
      if (!need || *need > have) {
        throw Error(ErrorKind::Format, file.string() + ": tensor '" + name + "' of shape " + shape_string(t.sizes()) +
                                           (need ? " needs " + std::to_string(*need) + " bytes of storage but its storage holds " +
                                                       std::to_string(have)
                                                 : " has a negative or overflowing size, stride or offset"));
      }
      tensors_.emplace(name, t);
    }
  }

  std::vector<std::string> names() const override {
    std::vector<std::string> out;
    for (const auto& [name, t] : tensors_) out.push_back(name);
    std::sort(out.begin(), out.end());
    return out;
  }
  bool contains(const std::string& name) const override { return tensors_.count(name) != 0; }
  TensorInfo info(const std::string& name) const override {
    const auto& t = tensor(name);
    return {name, t.scalar_type(), t.sizes().vec(), file_};
  }
  at::Tensor get(const std::string& name) const override { return tensor(name); }
  std::string describe() const override { return file_.string(); }

 private:
  const at::Tensor& tensor(const std::string& name) const {
    auto it = tensors_.find(name);
    if (it == tensors_.end()) throw Error(ErrorKind::NotFound, file_.string() + ": no tensor '" + name + "'");
    return it->second;
  }
  std::filesystem::path file_;
  std::unordered_map<std::string, at::Tensor> tensors_;
};

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// A shard of `index`: a regular weight file inside `dir`, resolved once — never a folder, another index
// (an index naming itself recursed without bound) or a link out of the folder.
std::unique_ptr<TensorSource> open_shard(const std::filesystem::path& index, const std::filesystem::path& dir,
                                         const std::string& file) {
  const std::filesystem::path rel(file);
  const auto refuse = [&](const std::string& why) {
    return Error(ErrorKind::Format, index.string() + ": shard '" + file + "' " + why);
  };
  if (file.empty() || rel.is_absolute() || std::any_of(rel.begin(), rel.end(), [](const auto& c) { return c == ".."; })) {
    throw refuse("leaves the model directory");
  }
  std::error_code ec;
  const auto root = std::filesystem::weakly_canonical(dir, ec);
  const auto real = std::filesystem::weakly_canonical(dir / rel, ec);
  if (ec) throw refuse("cannot be resolved");
  const auto [r, p] = std::mismatch(root.begin(), root.end(), real.begin(), real.end());
  if (r != root.end()) throw refuse("leaves the model directory");
  if (!std::filesystem::exists(real, ec)) throw Error(ErrorKind::NotFound, index.string() + ": shard '" + file + "' not found");
  if (!std::filesystem::is_regular_file(real, ec)) throw refuse("is not a weight file");
  if (ends_with(real.filename().string(), ".index.json")) throw refuse("is an index, not a weight file");
  return open_tensor_source(real);
}

// `*.index.json` with {"weight_map": {tensor: shard file}}: each shard opened once.
class ShardedSource : public TensorSource {
 public:
  explicit ShardedSource(const std::filesystem::path& index) : index_(index) {
    const nlohmann::json j = read_json_file(index, "shard index");
    if (!j.is_object() || !j.contains("weight_map") || !j["weight_map"].is_object()) {
      throw Error(ErrorKind::Format, index.string() + ": missing the \"weight_map\" object");
    }
    const auto dir = index.parent_path();
    std::unordered_map<std::string, size_t> shard_of_file;
    for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it) {
      if (!it.value().is_string()) {
        throw Error(ErrorKind::Format, index.string() + ": weight_map entry '" + it.key() + "' is not a file name");
      }
      const std::string file = it.value().get<std::string>();
      auto [pos, fresh] = shard_of_file.emplace(file, shards_.size());
      if (fresh) shards_.push_back(open_shard(index, dir, file));
      const auto& shard = shards_[pos->second];
      if (!shard->contains(it.key())) {
        throw Error(ErrorKind::NotFound, index.string() + ": tensor '" + it.key() + "' is not in its shard " +
                                             shard->describe());
      }
      where_.emplace(it.key(), pos->second);
    }
  }

  std::vector<std::string> names() const override {
    std::vector<std::string> out;
    for (const auto& [name, i] : where_) out.push_back(name);
    std::sort(out.begin(), out.end());
    return out;
  }
  bool contains(const std::string& name) const override { return where_.count(name) != 0; }
  TensorInfo info(const std::string& name) const override { return shard(name).info(name); }
  at::Tensor get(const std::string& name) const override { return shard(name).get(name); }
  std::string describe() const override { return index_.string(); }

 private:
  const TensorSource& shard(const std::string& name) const {
    auto it = where_.find(name);
    if (it == where_.end()) throw Error(ErrorKind::NotFound, index_.string() + ": no tensor '" + name + "'");
    return *shards_[it->second];
  }
  std::filesystem::path index_;
  std::vector<std::unique_ptr<TensorSource>> shards_;
  std::unordered_map<std::string, size_t> where_;
};

}  // namespace

std::unique_ptr<TensorSource> open_torch_bin(const std::filesystem::path& file) {
  return std::make_unique<TorchBinSource>(file);
}

std::unique_ptr<TensorSource> open_tensor_source(const std::filesystem::path& path) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) {
    for (const char* name : {"model.safetensors.index.json", "model.safetensors", "pytorch_model.bin.index.json",
                             "pytorch_model.bin"}) {
      if (std::filesystem::exists(path / name)) return open_tensor_source(path / name);
    }
    throw Error(ErrorKind::NotFound, path.string() +
                                         ": no weights (model.safetensors[.index.json] or "
                                         "pytorch_model.bin[.index.json])");
  }
  if (!std::filesystem::exists(path, ec)) throw Error(ErrorKind::NotFound, path.string() + ": no such file");
  // A FIFO or device would block or never end.
  if (!std::filesystem::is_regular_file(path, ec)) throw Error(ErrorKind::InvalidArgument, path.string() + ": not a regular file");
  const std::string name = path.filename().string();
  if (ends_with(name, ".index.json")) return std::make_unique<ShardedSource>(path);
  if (ends_with(name, ".safetensors")) return open_safetensors(path);
  if (ends_with(name, ".bin") || ends_with(name, ".pt") || ends_with(name, ".pth")) return open_torch_bin(path);
  throw Error(ErrorKind::Unsupported, path.string() + ": unknown weight file type (want .safetensors, .bin, "
                                                      ".pt, .pth or *.index.json)");
}

}  // namespace lego::weights
