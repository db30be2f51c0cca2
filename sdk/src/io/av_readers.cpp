#include "lego/sdk/io/av_readers.h"

extern "C" {
#include <libavcodec/avcodec.h>
#include <libavformat/avformat.h>
#include <libavutil/display.h>
#include <libavutil/imgutils.h>
#include <libavutil/opt.h>
#include <libswresample/swresample.h>
#include <libswscale/swscale.h>
}

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <memory>
#include <mutex>

#include "lego/sdk/audio/resample.h"
#include "lego/sdk/error.h"
#include "lego/sdk/files.h"

namespace lego::io {
namespace {

std::string av_error(int code) {
  char buf[AV_ERROR_MAX_STRING_SIZE] = {0};
  av_strerror(code, buf, sizeof buf);
  return buf;
}

[[noreturn]] void fail(const std::filesystem::path& file, const std::string& what, ErrorKind kind = ErrorKind::Format) {
  throw Error(kind, file.string() + ": " + what);
}

void quiet_ffmpeg_once() {
  static std::once_flag once;
  std::call_once(once, [] { av_log_set_level(AV_LOG_QUIET); });
}

struct FormatDeleter {
  void operator()(AVFormatContext* f) const { avformat_close_input(&f); }
};
struct CodecDeleter {
  void operator()(AVCodecContext* c) const { avcodec_free_context(&c); }
};
struct FrameDeleter {
  void operator()(AVFrame* f) const { av_frame_free(&f); }
};
struct PacketDeleter {
  void operator()(AVPacket* p) const { av_packet_free(&p); }
};
struct SwsDeleter {
  void operator()(SwsContext* s) const { sws_freeContext(s); }
};
struct SwrDeleter {
  void operator()(SwrContext* s) const { swr_free(&s); }
};

// An opened stream of one media type with its decoder.
struct Opened {
  std::unique_ptr<AVFormatContext, FormatDeleter> format;
  std::unique_ptr<AVCodecContext, CodecDeleter> codec;
  AVStream* stream = nullptr;
  int index = -1;
};

Opened open_stream(const std::filesystem::path& file, AVMediaType type, int threads) {
  quiet_ffmpeg_once();
  // A FIFO or device would block the demuxer forever; a folder is no medium.
  if (require_regular_file(file, "media file") == 0) fail(file, "empty file");
  Opened o;
  AVFormatContext* raw = nullptr;
  int rc = avformat_open_input(&raw, file.c_str(), nullptr, nullptr);
  if (rc < 0) fail(file, "cannot open as media: " + av_error(rc));
  o.format.reset(raw);
  rc = avformat_find_stream_info(raw, nullptr);
  if (rc < 0) fail(file, "cannot read stream info: " + av_error(rc));
  const AVCodec* decoder = nullptr;
  o.index = av_find_best_stream(raw, type, -1, -1, &decoder, 0);
  if (o.index < 0) {
    fail(file, std::string("has no ") + (type == AVMEDIA_TYPE_VIDEO ? "video" : "audio") + " stream" +
                   (o.index == AVERROR_DECODER_NOT_FOUND ? " with a known decoder" : ""));
  }
  o.stream = raw->streams[o.index];
  o.codec.reset(avcodec_alloc_context3(decoder));
  if (!o.codec) fail(file, "cannot allocate a decoder", ErrorKind::Io);
  rc = avcodec_parameters_to_context(o.codec.get(), o.stream->codecpar);
  if (rc < 0) fail(file, "bad codec parameters: " + av_error(rc));
  o.codec->thread_count = threads;  // 0: FFmpeg picks
  rc = avcodec_open2(o.codec.get(), decoder, nullptr);
  if (rc < 0) fail(file, "cannot open the decoder: " + av_error(rc));
  return o;
}

double seconds(int64_t ts, AVRational tb) { return static_cast<double>(ts) * av_q2d(tb); }

int rotation_of(const AVStream* st) {
  size_t size = 0;
  const uint8_t* matrix = av_stream_get_side_data(st, AV_PKT_DATA_DISPLAYMATRIX, &size);
  if (matrix == nullptr || size < 9 * sizeof(int32_t)) return 0;
  const double ccw = av_display_rotation_get(reinterpret_cast<const int32_t*>(matrix));
  if (std::isnan(ccw)) return 0;
  int clockwise = static_cast<int>(std::lround(-ccw)) % 360;
  if (clockwise < 0) clockwise += 360;
  return (clockwise + 45) / 90 * 90 % 360;
}

VideoInfo info_of(const Opened& o) {
  VideoInfo v;
  const AVStream* st = o.stream;
  const AVRational rate = av_guess_frame_rate(o.format.get(), const_cast<AVStream*>(st), nullptr);
  v.fps = rate.num > 0 && rate.den > 0 ? av_q2d(rate) : 0.0;
  if (st->duration != AV_NOPTS_VALUE && st->duration > 0) {
    v.duration_s = seconds(st->duration, st->time_base);
  } else if (o.format->duration != AV_NOPTS_VALUE && o.format->duration > 0) {
    v.duration_s = static_cast<double>(o.format->duration) / AV_TIME_BASE;
  }
  v.frames = st->nb_frames;
  if (v.frames <= 0 && v.fps > 0 && v.duration_s > 0) v.frames = std::llround(v.duration_s * v.fps);
  if (v.duration_s <= 0 && v.fps > 0 && v.frames > 0) v.duration_s = static_cast<double>(v.frames) / v.fps;
  v.rotation = rotation_of(st);
  const bool swap = v.rotation == 90 || v.rotation == 270;
  v.width = swap ? o.codec->height : o.codec->width;
  v.height = swap ? o.codec->width : o.codec->height;
  v.codec = o.codec->codec ? o.codec->codec->name : "";
  return v;
}

}  // namespace

const std::vector<std::string>& VideoReader::extensions() {
  static const std::vector<std::string> ext{"mp4", "mkv", "webm", "avi", "mov", "m4v", "mpg", "mpeg", "flv", "wmv", "gif"};
  return ext;
}

const std::vector<std::string>& AudioReader::extensions() {
  static const std::vector<std::string> ext{"wav", "mp3", "flac", "ogg", "opus", "m4a", "aac", "wma", "mp4", "mkv", "webm"};
  return ext;
}

VideoInfo VideoReader::probe(const std::filesystem::path& file) { return info_of(open_stream(file, AVMEDIA_TYPE_VIDEO, 1)); }

std::vector<int64_t> VideoReader::uniform_indices(int64_t frames, int64_t wanted) {
  std::vector<int64_t> out;
  if (frames <= 0 || wanted <= 0) return out;
  const int64_t n = std::min(wanted, frames);
  // numpy: arange(0, frames, frames / n) in float64, then astype(int).
  const double step = static_cast<double>(frames) / static_cast<double>(n);
  for (int64_t i = 0;; ++i) {
    const double v = static_cast<double>(i) * step;
    if (v >= static_cast<double>(frames)) break;
    out.push_back(static_cast<int64_t>(v));
  }
  return out;
}

VideoFrames VideoReader::sample_uniform(const std::filesystem::path& file, int64_t wanted, int64_t width, int64_t height,
                                        int threads) {
  if (wanted <= 0 || width <= 0 || height <= 0) {
    throw Error(ErrorKind::InvalidArgument, "video: frame count and size must be positive");
  }
  Opened o = open_stream(file, AVMEDIA_TYPE_VIDEO, threads);
  VideoFrames out;
  out.info = info_of(o);
  if (out.info.frames <= 0) fail(file, "has no frame count and no duration to sample by");
  const double fps = out.info.fps > 0 ? out.info.fps : static_cast<double>(out.info.frames) / std::max(out.info.duration_s, 1e-9);
  const double start = o.stream->start_time != AV_NOPTS_VALUE ? seconds(o.stream->start_time, o.stream->time_base) : 0.0;
  out.indices = uniform_indices(out.info.frames, wanted);

  const bool swap = out.info.rotation == 90 || out.info.rotation == 270;
  const int64_t scaled_w = swap ? height : width;
  const int64_t scaled_h = swap ? width : height;
  std::unique_ptr<SwsContext, SwsDeleter> sws;
  std::unique_ptr<AVFrame, FrameDeleter> frame(av_frame_alloc());
  std::unique_ptr<AVPacket, PacketDeleter> packet(av_packet_alloc());
  std::vector<at::Tensor> frames;
  at::Tensor last;  // the newest converted frame, for targets past the real end
  double last_converted_time = -1e300;
  double last_time = -1e300;  // the newest decoded frame, converted or not
  bool eof = false, flushed = false;

  auto convert = [&](const AVFrame* f) {
    sws.reset(sws_getCachedContext(sws.release(), f->width, f->height, static_cast<AVPixelFormat>(f->format),
                                   static_cast<int>(scaled_w), static_cast<int>(scaled_h), AV_PIX_FMT_RGB24, SWS_BICUBIC,
                                   nullptr, nullptr, nullptr));
    if (!sws) fail(file, "cannot convert its pixel format");
    auto rgb = at::empty({scaled_h, scaled_w, 3}, at::kByte);
    uint8_t* dst[4] = {rgb.data_ptr<uint8_t>(), nullptr, nullptr, nullptr};
    int dst_stride[4] = {static_cast<int>(scaled_w * 3), 0, 0, 0};
    sws_scale(sws.get(), f->data, f->linesize, 0, f->height, dst, dst_stride);
    switch (out.info.rotation) {
      case 90: return rgb.transpose(0, 1).flip({1}).contiguous();
      case 180: return rgb.flip({0, 1}).contiguous();
      case 270: return rgb.transpose(0, 1).flip({0}).contiguous();
      default: return rgb;
    }
  };
  // Decodes the next frame; false at the end of the stream.
  auto next_frame = [&]() -> bool {
    while (true) {
      const int rc = avcodec_receive_frame(o.codec.get(), frame.get());
      if (rc == 0) return true;
      if (rc == AVERROR_EOF) return false;
      if (rc != AVERROR(EAGAIN)) fail(file, "decoding failed: " + av_error(rc));
      if (eof) {
        if (flushed) return false;
        avcodec_send_packet(o.codec.get(), nullptr);
        flushed = true;
        continue;
      }
      const int read = av_read_frame(o.format.get(), packet.get());
      if (read < 0) {
        eof = true;
        continue;
      }
      if (packet->stream_index == o.index) {
        const int sent = avcodec_send_packet(o.codec.get(), packet.get());
        // A corrupt packet is skipped; a stream that never yields a frame ends in "no decodable frames".
        (void)sent;
      }
      av_packet_unref(packet.get());
    }
  };

  // Seek only when it skips enough work: when the keyframe before the target lies well past what was
  // decoded (a seek flushes the decoder's threads, which costs about as much as decoding a few frames).
  // Without an index (some containers), seek for targets far ahead and decode on to near ones.
  constexpr double kSeekAheadSeconds = 2.0;
  constexpr double kMinSkipSeconds = 1.0;
  for (int64_t index : out.indices) {
    const double target = start + static_cast<double>(index) / fps;
    const double tolerance = 0.5 / fps;
    const int64_t ts = static_cast<int64_t>(target / av_q2d(o.stream->time_base));
    bool seek = false;
    const int entry = av_index_search_timestamp(o.stream, ts, AVSEEK_FLAG_BACKWARD);
    if (entry >= 0) {
      const AVIndexEntry* key = avformat_index_get_entry(o.stream, entry);
      seek = key != nullptr && seconds(key->timestamp, o.stream->time_base) > last_time + kMinSkipSeconds;
    } else {
      seek = target - last_time > kSeekAheadSeconds;
    }
    if (seek) {
      if (av_seek_frame(o.format.get(), o.index, ts, AVSEEK_FLAG_BACKWARD) >= 0) {
        avcodec_flush_buffers(o.codec.get());
        eof = flushed = false;
      }
    }
    at::Tensor chosen;
    double chosen_time = last_converted_time;
    if (last.defined() && last_converted_time >= target - tolerance) {
      chosen = last;  // already decoded past it (duplicate index or dense sampling)
    }
    while (!chosen.defined()) {
      if (!next_frame()) break;
      const int64_t pts = frame->best_effort_timestamp != AV_NOPTS_VALUE ? frame->best_effort_timestamp : frame->pts;
      const double t = pts != AV_NOPTS_VALUE ? seconds(pts, o.stream->time_base) : last_time + 1.0 / fps;
      if (t < target - tolerance) {
        last_time = t;
        continue;  // before the target: skip without converting
      }
      last = convert(frame.get());
      last_time = last_converted_time = t;
      chosen = last;
      chosen_time = t;
      av_frame_unref(frame.get());
    }
    if (!chosen.defined()) {
      if (!last.defined()) {
        // The stream ended before the target: take the newest frame there is, decoding from the start.
        if (frames.empty()) break;
        chosen = frames.back();
        chosen_time = out.timestamps.back();
      } else {
        chosen = last;
        chosen_time = last_converted_time;
      }
    }
    frames.push_back(chosen);
    out.timestamps.push_back(chosen_time - start);
  }
  if (frames.empty()) fail(file, "no decodable video frames");
  out.indices.resize(frames.size());
  out.frames = at::stack(frames, 0);
  return out;
}

namespace {

// Rates and channel counts come from the file: checked before any buffer or resampler is set up.
constexpr int kMaxAudioChannels = 256;
// Decoded samples (all channels) beyond this are refused rather than allocated: 2^31 floats, 8 GiB.
constexpr size_t kMaxDecodedSamples = size_t{1} << 31;

void check_audio_shape(const std::filesystem::path& file, int64_t rate, int channels) {
  if (rate < 1 || rate > audio::kMaxSampleRate) {
    fail(file, "has an unusable sample rate of " + std::to_string(rate) + " Hz (lego reads 1 Hz to " +
                   std::to_string(audio::kMaxSampleRate) + " Hz)");
  }
  if (channels < 1 || channels > kMaxAudioChannels) {
    fail(file, "has " + std::to_string(channels) + " audio channels (lego reads 1 to " + std::to_string(kMaxAudioChannels) + ")");
  }
}

// A usable copy of a layout: an unspecified order becomes the default layout for its channel count.
AVChannelLayout usable_layout(const AVChannelLayout& in) {
  AVChannelLayout out{};
  if (in.order == AV_CHANNEL_ORDER_UNSPEC || av_channel_layout_check(&in) == 0) {
    av_channel_layout_default(&out, std::max(1, in.nb_channels));
  } else {
    av_channel_layout_copy(&out, &in);
  }
  return out;
}

// NaN or infinite samples (float and double files; a double beyond float range becomes infinite) are
// refused, naming the first one in time.
void check_finite_samples(const std::filesystem::path& file, const at::Tensor& x, int64_t rate) {
  const auto bad = at::isfinite(x).logical_not();
  if (!bad.any().item<bool>()) return;
  const int64_t sample = bad.any(0).to(at::kByte).argmax().item<int64_t>();
  const int64_t channel = bad.select(1, sample).to(at::kByte).argmax().item<int64_t>();
  const float v = x[channel][sample].item<float>();
  char when[32];
  std::snprintf(when, sizeof when, "%.6f", static_cast<double>(sample) / static_cast<double>(rate));
  fail(file, "sample " + std::to_string(sample) + " of channel " + std::to_string(channel) + " (at " + when + " s) is " +
                 (std::isnan(v) ? "NaN" : "infinite or beyond float range") +
                 "; audio with NaN or infinite samples is not read");
}

}  // namespace

Audio AudioReader::read(const std::filesystem::path& file, ChannelMix mix) {
  Opened o = open_stream(file, AVMEDIA_TYPE_AUDIO, 1);
  AVCodecContext* c = o.codec.get();
  // The stream's declared shape, checked before decoding; each frame is checked against it again.
  const int64_t declared_rate = c->sample_rate;
  if (declared_rate <= 0) fail(file, "has no sample rate");
  check_audio_shape(file, declared_rate, std::max(1, c->ch_layout.nb_channels));

  Audio out;
  std::unique_ptr<SwrContext, SwrDeleter> swr;
  int channels = 0;  // of the decoded frames, fixed by the first one
  int out_channels = 0;
  int format = AV_SAMPLE_FMT_NONE;
  std::vector<float> samples;  // interleaved [N, out_channels]
  std::unique_ptr<AVFrame, FrameDeleter> frame(av_frame_alloc());
  std::unique_ptr<AVPacket, PacketDeleter> packet(av_packet_alloc());

  // Converts to interleaved float at the same rate: a copy or scaling, or the down-mix matrix.
  auto setup = [&](const AVFrame* f) {
    out.rate = f->sample_rate > 0 ? f->sample_rate : declared_rate;
    channels = f->ch_layout.nb_channels > 0 ? f->ch_layout.nb_channels : std::max(1, c->ch_layout.nb_channels);
    check_audio_shape(file, out.rate, channels);
    format = f->format;
    AVChannelLayout in_layout = usable_layout(f->ch_layout.nb_channels > 0 ? f->ch_layout : c->ch_layout);
    AVChannelLayout out_layout{};
    if (mix == ChannelMix::kDownmix) {
      av_channel_layout_default(&out_layout, 1);
    } else {
      av_channel_layout_copy(&out_layout, &in_layout);
    }
    out_channels = out_layout.nb_channels;
    SwrContext* raw = nullptr;
    const int rc = swr_alloc_set_opts2(&raw, &out_layout, AV_SAMPLE_FMT_FLT, static_cast<int>(out.rate), &in_layout,
                                       static_cast<AVSampleFormat>(format), static_cast<int>(out.rate), 0, nullptr);
    swr.reset(raw);
    av_channel_layout_uninit(&in_layout);
    av_channel_layout_uninit(&out_layout);
    if (rc < 0 || swr_init(swr.get()) < 0) fail(file, "cannot convert its samples to float");
  };
  auto drain = [&](const AVFrame* f) {
    const int in_count = f ? f->nb_samples : 0;
    const int room = swr_get_out_samples(swr.get(), in_count);
    if (room <= 0) return;
    const size_t at = samples.size();
    const size_t more = static_cast<size_t>(room) * static_cast<size_t>(out_channels);
    if (at + more > kMaxDecodedSamples) {
      fail(file, "decodes to more than " + std::to_string(kMaxDecodedSamples) + " samples", ErrorKind::Unsupported);
    }
    samples.resize(at + more);
    uint8_t* dst = reinterpret_cast<uint8_t*>(samples.data() + at);
    const int got = swr_convert(swr.get(), &dst, room, f ? const_cast<const uint8_t**>(f->extended_data) : nullptr, in_count);
    if (got < 0) fail(file, "sample conversion failed: " + av_error(got));
    samples.resize(at + static_cast<size_t>(got) * static_cast<size_t>(out_channels));
  };
  auto receive_all = [&]() {
    while (avcodec_receive_frame(c, frame.get()) == 0) {
      if (!swr) {
        setup(frame.get());
      } else if (frame->format != format || (frame->sample_rate > 0 && frame->sample_rate != out.rate) ||
                 (frame->ch_layout.nb_channels > 0 && frame->ch_layout.nb_channels != channels)) {
        fail(file, "changes its sample format, rate or channel count mid-stream");
      }
      drain(frame.get());
      av_frame_unref(frame.get());
    }
  };
  while (av_read_frame(o.format.get(), packet.get()) >= 0) {
    if (packet->stream_index == o.index && avcodec_send_packet(c, packet.get()) >= 0) receive_all();
    av_packet_unref(packet.get());
  }
  avcodec_send_packet(c, nullptr);
  receive_all();
  if (swr) drain(nullptr);  // the converter's tail (none without resampling; kept for safety)
  if (samples.empty()) fail(file, "no decodable audio samples");
  const auto n = static_cast<int64_t>(samples.size()) / out_channels;
  // A copy that owns its memory (for one channel the transpose is already "contiguous" and would not copy).
  out.samples = at::from_blob(samples.data(), {n, out_channels}, at::kFloat).t().clone(at::MemoryFormat::Contiguous);
  check_finite_samples(file, out.samples, out.rate);
  out.source_channels = channels;
  out.duration_s = static_cast<double>(n) / static_cast<double>(out.rate);
  return out;
}

}  // namespace lego::io
