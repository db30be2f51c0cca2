// Reads this process's memory map (/proc/self/smaps), for tests of how memory is mapped.
#pragma once

#include <cstdint>
#include <cstdio>
#include <fstream>
#include <string>

namespace lego::testing {

// The number after `field` ("Rss", "Anonymous", "THPeligible", ...) in the smaps entry of the mapping that
// holds `p` (kB for sizes); -1 where no mapping holds p or its entry has no such field.
inline long mapping_field(const void* p, const std::string& field) {
  std::ifstream smaps("/proc/self/smaps");
  const auto at = reinterpret_cast<uintptr_t>(p);
  const std::string key = field + ":";
  std::string line;
  bool inside = false;
  while (std::getline(smaps, line)) {
    unsigned long begin = 0, end = 0;
    if (std::sscanf(line.c_str(), "%lx-%lx ", &begin, &end) == 2 && line.find(':') > line.find(' ')) {
      if (inside) break;
      inside = at >= begin && at < end;
    } else if (inside && line.rfind(key, 0) == 0) {
      return std::stol(line.substr(key.size()));
    }
  }
  return -1;
}

}  // namespace lego::testing
