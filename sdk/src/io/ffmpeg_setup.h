// Process-wide FFmpeg settings shared by the readers and the writer of sdk_io (not a public header).
#pragma once

namespace lego::io {

// Silences FFmpeg's own logging (lego words its failures) and bounds any one FFmpeg allocation; once.
void quiet_ffmpeg_once();

}  // namespace lego::io
