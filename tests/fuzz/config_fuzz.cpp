// Fuzzes model.ini reading (config::read_file) and `--set` overrides (Config::set): the input is read as
// an INI file, then each of its lines is applied as a `--set` assignment. Every typed getter is tried on
// every key, and the result must survive the trip through to_ini() (what `lego init` and `lego import`
// write as model.ini) and back.
#include <sstream>
#include <string>

#include "fuzz_support.h"
#include "lego/config/config.h"

namespace {

using lego::config::Config;

void read_every_key(const Config& cfg) {
  for (const auto& section : cfg.sections()) {
    const auto view = lego::config::ConfigSection(std::make_shared<Config>(cfg), section);
    for (const auto& key : view.keys()) {
      lego::fuzz::check(view.has(key), "section_keys() lists '" + section + "." + key + "' but has() denies it");
      (void)view.get_string(key);
      (void)view.get_list(key);
      lego::fuzz::refused_or_done([&] { (void)view.get_int(key); });
      lego::fuzz::refused_or_done([&] { (void)view.get_double(key); });
      lego::fuzz::refused_or_done([&] { (void)view.get_bool(key); });
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  const auto file = lego::fuzz::write_input("model.ini", data, size);
  Config cfg;
  const bool read = lego::fuzz::refused_or_done([&] { cfg = lego::config::read_file(file); });
  if (!read) cfg = Config(file);
  std::istringstream lines(text);
  for (std::string line; std::getline(lines, line);) {
    lego::fuzz::refused_or_done([&] { cfg.set(std::string_view(line)); });
  }
  read_every_key(cfg);

  const std::string ini = cfg.to_ini();
  const auto written = lego::fuzz::write_input("written.ini", reinterpret_cast<const uint8_t*>(ini.data()), ini.size());
  Config back;
  const bool reread = lego::fuzz::refused_or_done([&] { back = lego::config::read_file(written); });
  lego::fuzz::check(reread, "to_ini() wrote a file read_file() refuses:\n" + ini);
  lego::fuzz::check(back.to_ini() == ini, "to_ini() -> read_file() changed the settings:\n" + ini + "-- read back as --\n" +
                                              back.to_ini());
  return 0;
}
