#include "lego/sdk/io/wav_writer.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "lego/sdk/error.h"
#include "lego/sdk/files.h"

namespace lego::io {
namespace {

void put16(std::string& b, uint16_t v) {
  for (int i = 0; i < 2; ++i) b.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}
void put32(std::string& b, uint32_t v) {
  for (int i = 0; i < 4; ++i) b.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

}  // namespace

void write_wav_mono16(const std::filesystem::path& out, const std::vector<float>& samples, int rate) {
  if (rate < 1 || rate > 384000) throw Error(ErrorKind::InvalidArgument, out.string() + ": a sample rate of " + std::to_string(rate) + " Hz");
  // RIFF sizes are 32-bit: the data and the 36 header bytes after the first size field must fit.
  if (samples.size() > (uint64_t{0xffffffff} - 36) / 2) {
    throw Error(ErrorKind::InvalidArgument, out.string() + ": " + std::to_string(samples.size()) + " samples do not fit in a WAV file");
  }
  const auto data_bytes = static_cast<uint32_t>(samples.size() * 2);
  std::string b;
  b.reserve(44 + data_bytes);
  b += "RIFF";
  put32(b, 36 + data_bytes);
  b += "WAVEfmt ";
  put32(b, 16);
  put16(b, 1);  // PCM
  put16(b, 1);  // mono
  put32(b, static_cast<uint32_t>(rate));
  put32(b, static_cast<uint32_t>(rate) * 2);  // bytes per second
  put16(b, 2);   // bytes per frame
  put16(b, 16);  // bits per sample
  b += "data";
  put32(b, data_bytes);
  for (float s : samples) {
    const float v = std::isfinite(s) ? std::clamp(s, -1.0f, 1.0f) : 0.0f;
    put16(b, static_cast<uint16_t>(static_cast<int16_t>(std::lround(v * 32767.0f))));
  }
  AtomicFile file(out);
  file.write(b);
  file.commit();
}

}  // namespace lego::io
