// SynthGround scenes: the modality-neutral description of a generated grounding sample (`lego synth`).
//
// Core draws scenes (which shapes, colours, sizes and places; what happens when; which object sounds) and
// writes the questions and answers; each modality plugin renders a scene into a file of its own kind with
// Modality::synthesize and says what of the scene that file grounds: boxes of the objects (in the answer's
// convention of that modality, e.g. relative to the padded square), the span of the scene's event, or the
// one object the medium singles out (a sound). Core pairs them into tasks by what they ground, never by
// modality name: boxes -> referring expressions, a span -> "When does ...?", an object singled out plus a
// medium with boxes -> "Where does ... come from?".
#pragma once

#include <array>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

namespace lego::synth {

// The shape classes; a sound's timbre is chosen by the shape class of the object it comes from.
enum class Shape : int { Circle = 0, Square = 1, Triangle = 2, Star = 3 };
inline constexpr int kShapes = 4;
inline constexpr std::array<const char*, kShapes> kShapeNames = {"circle", "square", "triangle", "star"};

struct Colour {
  const char* name;
  std::array<uint8_t, 3> rgb;
};
inline constexpr int kColours = 8;
inline constexpr std::array<Colour, kColours> kPalette = {{{"red", {220, 40, 40}},
                                                           {"green", {40, 170, 60}},
                                                           {"blue", {40, 80, 220}},
                                                           {"yellow", {240, 220, 40}},
                                                           {"purple", {140, 50, 170}},
                                                           {"orange", {245, 140, 30}},
                                                           {"white", {250, 250, 250}},
                                                           {"black", {15, 15, 15}}}};

enum class Background : int { Plain = 0, Gradient = 1, Texture = 2 };

// One object of a scene. Positions are relative to the scene's frame ([0, 1] on each axis, origin top
// left); `size` is the object's side (or diameter) as a fraction of the frame's shorter side.
struct Object {
  Shape shape = Shape::Circle;
  int colour = 0;  // index into kPalette
  double size = 0.2;
  double cx = 0.5, cy = 0.5;
  double angle = 0;  // rotation in radians (triangles and stars)
};

// Something that happens to one object during [t1, t2] (relative to the duration): it appears (absent
// before t1 and after t2), moves from its place to (to_cx, to_cy), or shows colour `to_colour` meanwhile.
enum class EventKind : int { Appear = 0, Move = 1, ChangeColour = 2 };
struct Event {
  int object = 0;
  EventKind kind = EventKind::Appear;
  double t1 = 0, t2 = 1;
  double to_cx = 0.5, to_cy = 0.5;
  int to_colour = 0;
};

struct Scene {
  int width = 320, height = 240;  // the frame in pixels (aspect ratios vary, so padding matters)
  Background background = Background::Plain;
  std::array<uint8_t, 3> background_rgb{90, 140, 200};
  std::array<uint8_t, 3> background_rgb2{30, 60, 90};  // gradient end / texture contrast
  std::vector<Object> objects;
  double duration_s = 4;
  std::optional<Event> event;  // media with a time axis show it
  int sounding = -1;           // the object a sound comes from (by its shape class), -1: none
  uint64_t seed = 0;           // for the renderer's own noise (textures, jitter)
};

// What a rendered file grounds.
struct Rendered {
  std::filesystem::path file;
  // Per object of the scene, its box as an answer of this modality writes it (values in [0, 1]); empty
  // when this medium carries no boxes.
  std::vector<std::vector<double>> boxes;
  // The event's span as an answer writes it ({t1, t2}, relative); none when this medium has no time axis.
  std::optional<std::array<double, 2>> span;
  // The object this medium singles out without locating it (a sound from it); -1 when none.
  int singles_out = -1;
};

}  // namespace lego::synth
