// Drawing SynthGround scenes (lego/sdk/synth.h) for the plugins' Modality::synthesize (DESIGN.md, sdk/io).
//
// One rasteriser serves every visual medium: the image plugin draws a scene's still, the video plugin one
// frame per time step. Shapes are filled analytically with anti-aliased edges (exact horizontal coverage
// on four sub-rows per pixel row), so the box of an object computed from its geometry is where its pixels
// are. All noise (textures, gradient angles) comes from the scene's seed: the same scene gives the same
// pixels. check_scene bounds every field before anything is drawn or allocated.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <vector>

#include "lego/sdk/synth.h"

namespace lego::io {

// The limits check_scene enforces (hostile scenes come from files and the command line).
inline constexpr int kMinSceneSide = 16, kMaxSceneSide = 4096;
inline constexpr double kMinSceneSeconds = 0.5, kMaxSceneSeconds = 600;
inline constexpr size_t kMaxSceneObjects = 64;

// Refuses a scene with a size, duration, count, index or number out of range (InvalidArgument naming the
// field, e.g. "scene.objects[2].colour").
void check_scene(const synth::Scene& scene);

// Where and how an object is drawn at one moment.
struct ObjectState {
  bool visible = true;
  double cx = 0.5, cy = 0.5;  // relative to the frame
  int colour = 0;             // index into synth::kPalette
};

// The state of every object at `t_relative` (in [0, 1] of the duration) with the scene's event applied:
// Appear shows its object only for t in [t1, t2]; Move goes linearly from its place at t1 to (to_cx, to_cy)
// at t2 and stays; ChangeColour shows to_colour for t in [t1, t2]. Without `t_relative`, every object in its
// own (start) state, as a still image shows it.
std::vector<ObjectState> object_states(const synth::Scene& scene, std::optional<double> t_relative);

// A box in pixels of the frame, edges as continuous coordinates: x in [x1, x2) covers pixel columns
// floor(x1) .. ceil(x2) - 1.
struct PixelBox {
  double x1 = 0, y1 = 0, x2 = 0, y2 = 0;
};

// Each object's tight box at `t_relative` (none: the still) from the geometry that is drawn, clipped to the
// frame; nothing for an object that is hidden or wholly outside the frame.
std::vector<std::optional<PixelBox>> scene_boxes(const synth::Scene& scene, std::optional<double> t_relative);

// The scene drawn at `t_relative` (none: the still): [height, width, 3] uint8 RGB, objects in order (later
// ones on top). Checks the scene first.
at::Tensor draw_scene(const synth::Scene& scene, std::optional<double> t_relative);

}  // namespace lego::io
