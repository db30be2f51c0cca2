#include "lego/host/plugin_host.h"

#include <boost/dll/runtime_symbol_info.hpp>
#include <boost/dll/shared_library.hpp>
#include <torch/version.h>

#include <elf.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>

#include "lego/sdk/abi.h"
#include "lego/sdk/error.h"

namespace lego::host {
namespace {

using Library = std::shared_ptr<boost::dll::shared_library>;

struct Loaded {
  std::filesystem::path file;
  std::string modality;
  Library library;
  const LegoPluginDescriptor* descriptor;
};

bool is_shared_library(const std::filesystem::path& p) {
  return p.extension() == ".so" && std::filesystem::is_regular_file(p);
}

// Why `file` cannot be a loadable shared library of this machine, or "" when its ELF header, program
// headers and every loaded segment lie inside the file. The loader maps segments without reading them,
// so a truncated library would otherwise fault (SIGBUS) on first touch instead of failing to load.
std::string elf_problem(const std::filesystem::path& file) {
  std::error_code ec;
  const uint64_t size = std::filesystem::file_size(file, ec);
  if (ec) return "cannot read its size: " + ec.message();
  std::ifstream in(file, std::ios::binary);
  Elf64_Ehdr eh{};
  if (!in.read(reinterpret_cast<char*>(&eh), sizeof eh)) return "shorter than an ELF header";
  if (std::memcmp(eh.e_ident, ELFMAG, SELFMAG) != 0) return "not an ELF file";
  if (eh.e_ident[EI_CLASS] != ELFCLASS64 || eh.e_ident[EI_DATA] != ELFDATA2LSB || eh.e_type != ET_DYN) {
    return "not a 64-bit little-endian ELF shared object";
  }
  if (eh.e_phentsize != sizeof(Elf64_Phdr) || eh.e_phnum == 0 || eh.e_phnum == PN_XNUM) {
    return "malformed ELF program header table";
  }
  const uint64_t table_end = eh.e_phoff + uint64_t{eh.e_phnum} * sizeof(Elf64_Phdr);
  if (eh.e_phoff > size || table_end > size) return "truncated: its program headers lie past the end of the file";
  if (eh.e_shoff > size || eh.e_shoff + uint64_t{eh.e_shnum} * eh.e_shentsize > size) {
    return "truncated: its section headers lie past the end of the file";
  }
  in.seekg(static_cast<std::streamoff>(eh.e_phoff));
  for (uint16_t i = 0; i < eh.e_phnum; ++i) {
    Elf64_Phdr ph{};
    if (!in.read(reinterpret_cast<char*>(&ph), sizeof ph)) return "cannot read its program headers";
    if (ph.p_type != PT_LOAD && ph.p_type != PT_DYNAMIC) continue;
    if (ph.p_offset > size || ph.p_filesz > size - ph.p_offset) {
      return "truncated: segment " + std::to_string(i) + " ends at byte " + std::to_string(ph.p_offset + ph.p_filesz) +
             " of a " + std::to_string(size) + "-byte file";
    }
  }
  return "";
}

// Makes a modality that keeps its library alive and is destroyed by the plugin that made it.
std::shared_ptr<Modality> make(const Loaded& l, const ModalityConfig& config) {
  char error[1024] = {0};
  Modality* raw = l.descriptor->create(&config, l.modality.c_str(), error, sizeof error);
  if (raw == nullptr) {
    throw Error(ErrorKind::Plugin, l.file.string() + ": the " + l.modality + " factory failed: " + error);
  }
  auto library = l.library;
  auto destroy = l.descriptor->destroy;
  return std::shared_ptr<Modality>(raw, [library, destroy](Modality* m) { destroy(m); });
}

}  // namespace

struct PluginHost::Impl {
  std::vector<PluginRecord> records;
  std::vector<Loaded> loaded;

  void open(const std::filesystem::path& file) {
    records.push_back({});
    PluginRecord& r = records.back();
    r.file = file;
    auto refuse = [&](const std::string& why) { r.reason = why; };
    if (const auto problem = elf_problem(file); !problem.empty()) return refuse("cannot load: " + problem);
    Library lib;
    try {
      // Symbols bound now: one this SDK lacks is a refusal here, not an exit in the middle of a run.
      lib = std::make_shared<boost::dll::shared_library>(file.string(), boost::dll::load_mode::rtld_now |
                                                                            boost::dll::load_mode::rtld_local);
    } catch (const std::exception& e) {
      return refuse(std::string("cannot load: ") + e.what());
    }
    if (!lib->has(LEGO_PLUGIN_ENTRY_NAME)) return refuse("no " LEGO_PLUGIN_ENTRY_NAME " symbol: not a lego plugin");
    const LegoPluginDescriptor* d = lib->get<const LegoPluginDescriptor*()>(LEGO_PLUGIN_ENTRY_NAME)();
    if (d == nullptr) return refuse("its descriptor is null");
    // The ABI version is read alone first: past a mismatch the layout of the rest is unknown.
    r.abi_version = *reinterpret_cast<const uint32_t*>(d);
    if (r.abi_version != LEGO_PLUGIN_ABI_VERSION) {
      return refuse("plugin ABI version " + std::to_string(r.abi_version) + ", host expects " +
                    std::to_string(LEGO_PLUGIN_ABI_VERSION) + " (rebuild the plugin against this SDK)");
    }
    // Same version, so the sizes block is where the host expects it; a struct that grew without a
    // version bump shows here before anything of that layout is used.
    const LegoPluginSizes want = LEGO_PLUGIN_SIZES;
    const std::pair<const char*, std::pair<uint32_t, uint32_t>> sizes[] = {
        {"descriptor", {d->sizes.descriptor, want.descriptor}},
        {"Modality", {d->sizes.modality, want.modality}},
        {"ModalityConfig", {d->sizes.modality_config, want.modality_config}},
        {"Media", {d->sizes.media, want.media}},
        {"MediaBatch", {d->sizes.media_batch, want.media_batch}},
        {"ImportPlan", {d->sizes.import_plan, want.import_plan}}};
    for (const auto& [what, got] : sizes) {
      if (got.first != got.second) {
        return refuse(std::string("sizeof(") + what + ") is " + std::to_string(got.first) + " in the plugin, " +
                      std::to_string(got.second) + " in the host (SDK headers differ)");
      }
    }
    r.sdk_version = d->sdk_version ? d->sdk_version : "";
    r.torch_version = d->torch_version ? d->torch_version : "";
    r.modality = d->modality ? d->modality : "";
    if (r.sdk_version != LEGO_SDK_VERSION) {
      return refuse("built with SDK " + r.sdk_version + ", host has SDK " LEGO_SDK_VERSION);
    }
    if (r.torch_version != TORCH_VERSION) {
      return refuse("built with libtorch " + r.torch_version + ", host has libtorch " TORCH_VERSION);
    }
    if (d->cxx11_abi != _GLIBCXX_USE_CXX11_ABI) {
      return refuse("built with _GLIBCXX_USE_CXX11_ABI=" + std::to_string(d->cxx11_abi) + ", host has " +
                    std::to_string(_GLIBCXX_USE_CXX11_ABI));
    }
    if (r.modality.empty() || d->create == nullptr || d->destroy == nullptr) {
      return refuse("descriptor lacks a modality name or factory");
    }
    Loaded l{file, r.modality, lib, d};
    // A probe with default options tells the placeholder and token count, and proves the factory works.
    try {
      ModalityConfig probe;
      probe.llm_hidden_size = 4096;
      auto m = make(l, probe);
      r.placeholder = m->placeholder();
      r.tokens = m->tokens();
      r.file_types = m->file_types();
      r.grounding = m->grounding();
      r.import_inputs = m->import_inputs();
    } catch (const Error& e) {
      return refuse(std::string("probe failed: ") + e.what());
    }
    r.loaded = true;
    loaded.push_back(l);
  }
};

std::vector<std::filesystem::path> PluginHost::search_path(const std::vector<std::filesystem::path>& plugin_dirs) {
  std::vector<std::filesystem::path> out = plugin_dirs;
  if (const char* env = std::getenv("LEGO_PLUGIN_PATH")) {
    std::stringstream in(env);
    for (std::string dir; std::getline(in, dir, ':');) {
      if (!dir.empty()) out.emplace_back(dir);
    }
  }
  std::error_code ec;
  const auto exe = std::filesystem::path(boost::dll::program_location(ec).string());
  if (!ec) out.push_back(exe.parent_path().parent_path() / "lib" / "lego" / "plugins");
  // Beside this library too, for programs that are not ours (python running the bindings): lib/lego/plugins
  // of the install or the build tree that liblego_core came from. Files found twice are opened once.
  const auto self = std::filesystem::path(boost::dll::this_line_location(ec).string());
  if (!ec && std::find(out.begin(), out.end(), self.parent_path() / "lego" / "plugins") == out.end()) {
    out.push_back(self.parent_path() / "lego" / "plugins");
  }
  return out;
}

PluginHost::PluginHost(const std::vector<std::filesystem::path>& plugin_dirs) : impl_(std::make_unique<Impl>()) {
  std::set<std::filesystem::path> seen;
  for (const auto& dir : plugin_dirs) {
    std::error_code ec;
    if (!std::filesystem::is_directory(dir, ec)) {
      throw Error(ErrorKind::NotFound, "--plugin-dir " + dir.string() + ": no such directory");
    }
  }
  for (const auto& dir : search_path(plugin_dirs)) {
    std::error_code ec;
    if (!std::filesystem::is_directory(dir, ec)) continue;
    std::vector<std::filesystem::path> files;
    for (const auto& e : std::filesystem::directory_iterator(dir, ec)) {
      if (is_shared_library(e.path())) files.push_back(e.path());
    }
    std::sort(files.begin(), files.end());
    for (const auto& f : files) {
      const auto canonical = std::filesystem::weakly_canonical(f, ec);
      if (!seen.insert(canonical).second) continue;
      impl_->open(f);
    }
  }
}

PluginHost::~PluginHost() = default;

const std::vector<PluginRecord>& PluginHost::records() const { return impl_->records; }

std::vector<std::string> PluginHost::modalities() const {
  std::vector<std::string> out;
  for (const auto& l : impl_->loaded) {
    if (std::find(out.begin(), out.end(), l.modality) == out.end()) out.push_back(l.modality);
  }
  return out;
}

const PluginRecord* PluginHost::provider(const std::string& modality) const {
  for (const auto& r : impl_->records) {
    if (r.loaded && r.modality == modality) return &r;
  }
  return nullptr;
}

std::shared_ptr<Modality> PluginHost::create(const std::string& modality, const ModalityConfig& config) const {
  for (const auto& l : impl_->loaded) {
    if (l.modality == modality) return make(l, config);
  }
  std::string found;
  for (const auto& r : impl_->records) {
    found += (found.empty() ? " " : "; ") + r.file.string() + ": " + (r.loaded ? "provides " + r.modality : "refused: " + r.reason);
  }
  throw Error(ErrorKind::NotFound, "no plugin provides the '" + modality + "' modality" +
                                       (found.empty() ? " (no plugins found; see --plugin-dir, LEGO_PLUGIN_PATH)"
                                                      : "; found:" + found));
}

}  // namespace lego::host
