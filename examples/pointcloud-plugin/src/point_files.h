// Point cloud files: PLY (ASCII and binary, either byte order), XYZ text and NumPy .npy, read into points
// with optional colours. Every count read from a file is checked against the bytes that follow it before
// anything is allocated, and every coordinate must be finite; a bad file is a lego::Error naming it.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace pointcloud {

// The most points and bytes one file may hold.
inline constexpr int64_t kMaxPoints = int64_t{1} << 24;
inline constexpr std::uintmax_t kMaxFileBytes = std::uintmax_t{1} << 30;

struct Cloud {
  int64_t size = 0;
  std::vector<float> xyz;  // size * 3
  std::vector<float> rgb;  // size * 3 in [0, 1], or empty when the file has no colours
};

// By extension: .ply, .xyz / .txt ("x y z" or "x y z r g b" per line, colours 0-255), .npy (float32 or
// float64, shape [N, 3] or [N, 6] with colours in [0, 1]).
Cloud read_cloud(const std::filesystem::path& file);
// The extensions read_cloud() reads, lower case without the dot.
std::vector<std::string> cloud_extensions();

// Writers, for SynthGround and tests: binary little-endian PLY with float xyz and uchar colours.
void write_ply(const std::filesystem::path& file, const Cloud& cloud);

}  // namespace pointcloud
