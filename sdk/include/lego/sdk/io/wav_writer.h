// Writing sound as a WAV file (RIFF, 16-bit PCM, mono) (DESIGN.md, sdk/io): what the sound plugin renders
// SynthGround scenes to. Written atomically (temporary file, fsync, rename).
#pragma once

#include <cstdint>
#include <filesystem>
#include <vector>

namespace lego::io {

// Writes `samples` (in [-1, 1]; beyond is clipped) at `rate` Hz (1..384000) as 16-bit PCM mono.
void write_wav_mono16(const std::filesystem::path& out, const std::vector<float>& samples, int rate);

}  // namespace lego::io
