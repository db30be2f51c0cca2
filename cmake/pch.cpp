// Anchor for the shared precompiled header (cmake/LegoTargets.cmake).
