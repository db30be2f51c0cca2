// SynthGround scenes as point clouds: the scene's objects stand on a floor that spans the unit square
// (x right, z away from the viewer, y up), seen from above as the picture shows them: a circle becomes a
// sphere, a square a cube, a triangle a pyramid and a star a star-shaped prism, in the object's colour.
// The floor's corners fix the cloud's bounds to the unit cube, so a box relative to the normalised cloud is
// the box in scene coordinates.
#pragma once

#include <filesystem>
#include <optional>

#include "lego/sdk/synth.h"

namespace pointcloud {

// Writes `stem`.ply and returns each object's 3-D box [x1, y1, z1, x2, y2, z2].
std::optional<lego::synth::Rendered> render_scene(const lego::synth::Scene& scene, const std::filesystem::path& stem);

}  // namespace pointcloud
