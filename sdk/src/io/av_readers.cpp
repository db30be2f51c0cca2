#include "lego/sdk/io/av_readers.h"

extern "C" {
#include <libavcodec/avcodec.h>
#include <libavformat/avformat.h>
#include <libavutil/display.h>
#include <libavutil/imgutils.h>
#include <libavutil/mem.h>
#include <libavutil/opt.h>
#include <libavutil/pixdesc.h>
#include <libswresample/swresample.h>
#include <libswscale/swscale.h>
}

#include <ATen/ATen.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <memory>
#include <mutex>
#include <optional>

#include "lego/sdk/audio/resample.h"
#include "lego/sdk/error.h"
#include "lego/sdk/files.h"
#include "ffmpeg_setup.h"

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

// FFmpeg logs nothing (its failures come back as codes, which lego words), and no single FFmpeg
// allocation may pass 256 MiB: demuxers size some buffers from the file's own fields (an 86-byte WAV
// whose INFO tag claims 2.8 GB cost 2.1 GB and 3 s inside avformat_open_input: a fuzz finding), and the
// largest legitimate one, an 8K frame of 16-bit 4:4:4, is 200 MB. Process-wide, set once.
constexpr size_t kMaxFfmpegAllocation = size_t{256} << 20;

// Pixels (width x height x frames) below which one decoder thread beats FFmpeg's team (open_stream).
constexpr double kSmallVideoPixels = 5e6;

}  // namespace

void quiet_ffmpeg_once() {
  static std::once_flag once;
  std::call_once(once, [] {
    av_log_set_level(AV_LOG_QUIET);
    av_max_alloc(kMaxFfmpegAllocation);
  });
}

namespace {

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
  o.codec->thread_count = threads;  // 0: FFmpeg picks (a team of frame threads), except for a small video
  if (threads == 0 && type == AVMEDIA_TYPE_VIDEO) {
    // A team must start (about 10 ms on 2 cores) and fill before its first frame: a video of 384 x 256 x 32
    // frames decodes in 11 ms on one thread and 24 ms on FFmpeg's choice, one of 320 x 240 x 100 frames in
    // 49 and 44 ms (bench/av_bench.cpp sample). Below a few million pixels to decode, one thread.
    const AVRational rate = av_guess_frame_rate(raw, o.stream, nullptr);
    double frames = static_cast<double>(o.stream->nb_frames);
    if (frames <= 0 && rate.num > 0 && rate.den > 0 && raw->duration > 0) {
      frames = static_cast<double>(raw->duration) / AV_TIME_BASE * av_q2d(rate);
    }
    const double pixels = static_cast<double>(o.stream->codecpar->width) * o.stream->codecpar->height * frames;
    if (frames > 0 && pixels < kSmallVideoPixels) o.codec->thread_count = 1;
  }
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

namespace {

// decord, the release's reader, counts a video's frames as the packets of its stream and numbers them in
// presentation order: frame i is the packet with the i-th smallest timestamp. A nominal frame rate says
// nothing about where frame i lies in a variable-frame-rate (phone) video, so every index goes through
// this table of the stream's own packets.
struct PacketIndex {
  std::vector<int64_t> ts;          // presentation order: pts, else dts (stream time base); decode order if untimed
  std::vector<int64_t> key_before;  // per frame: the newest keyframe at or before it in presentation order
  bool timed = true;                // false when some packet has no timestamp: no seeking, frames counted instead
  bool from_container = false;      // taken from the container's index: decoding checks each packet against it
};

int64_t packet_time(const AVPacket* p) { return p->pts != AV_NOPTS_VALUE ? p->pts : p->dts; }
int64_t frame_time(const AVFrame* f) { return f->pts != AV_NOPTS_VALUE ? f->pts : f->best_effort_timestamp; }

// Other streams are not read at all: the demuxer skips their packets.
void read_only_stream(Opened& o) {
  for (unsigned i = 0; i < o.format->nb_streams; ++i) {
    o.format->streams[i]->discard = static_cast<int>(i) == o.index ? AVDISCARD_DEFAULT : AVDISCARD_ALL;
  }
}

// Sorts packets (timestamp, keyframe) into presentation order and marks each frame's keyframe.
PacketIndex order_packets(std::vector<std::pair<int64_t, bool>> packets, bool timed) {
  PacketIndex idx;
  idx.timed = timed;
  if (timed) {
    std::stable_sort(packets.begin(), packets.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  }
  idx.ts.reserve(packets.size());
  idx.key_before.reserve(packets.size());
  int64_t key = 0;
  for (size_t i = 0; i < packets.size(); ++i) {
    idx.ts.push_back(timed ? packets[i].first : static_cast<int64_t>(i));
    if (packets[i].second) key = static_cast<int64_t>(i);
    idx.key_before.push_back(key);
  }
  return idx;
}

// One demux pass (packets only, nothing decoded).
PacketIndex index_packets(const Opened& o) {
  bool timed = true;
  std::vector<std::pair<int64_t, bool>> packets;  // timestamp, keyframe
  std::unique_ptr<AVPacket, PacketDeleter> packet(av_packet_alloc());
  while (av_read_frame(o.format.get(), packet.get()) >= 0) {
    if (packet->stream_index == o.index) {
      const int64_t ts = packet_time(packet.get());
      timed = timed && ts != AV_NOPTS_VALUE;
      packets.emplace_back(ts, (packet->flags & AV_PKT_FLAG_KEY) != 0);
    }
    av_packet_unref(packet.get());
  }
  return order_packets(std::move(packets), timed);
}

// A container that lists every packet (mp4, mov) spares the demux pass, which reads the whole file. Its
// times are decode times: they are the presentation times only when the stream does not reorder, so
// decoding checks every packet it reads against them and falls back to the demux pass if one differs.
std::optional<PacketIndex> index_from_container(const Opened& o) {
  const int n = avformat_index_get_entries_count(o.stream);
  if (n <= 0 || o.stream->nb_frames != n || o.stream->codecpar->video_delay != 0) return std::nullopt;
  std::vector<std::pair<int64_t, bool>> packets;
  packets.reserve(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) {
    const AVIndexEntry* e = avformat_index_get_entry(o.stream, i);
    if (e == nullptr || e->timestamp == AV_NOPTS_VALUE || (i > 0 && e->timestamp <= packets.back().first)) return std::nullopt;
    packets.emplace_back(e->timestamp, (e->flags & AVINDEX_KEYFRAME) != 0);
  }
  PacketIndex idx = order_packets(std::move(packets), true);
  idx.from_container = true;
  return idx;
}

// Back to the first packet after the index pass; reopens where the container cannot seek.
void rewind(Opened& o, const PacketIndex& idx, const std::filesystem::path& file, int threads) {
  if (idx.timed && !idx.ts.empty() &&
      av_seek_frame(o.format.get(), o.index, idx.ts.front(), AVSEEK_FLAG_BACKWARD) >= 0) {
    avcodec_flush_buffers(o.codec.get());
    return;
  }
  o = open_stream(file, AVMEDIA_TYPE_VIDEO, threads);
  read_only_stream(o);
}

// decord resizes in an FFmpeg filter graph: "transpose" for the display rotation, then "scale", whose
// libswscale flags default to bilinear, with the frame's own YCbCr matrix and range. The same here:
// planes turned upright first (when the format allows it), then one bilinear libswscale pass to RGB.
class FrameScaler {
 public:
  FrameScaler(const std::filesystem::path& file, int rotation, int64_t width, int64_t height)
      : file_(file), rotation_(rotation), width_(width), height_(height) {}

  at::Tensor operator()(const AVFrame* f) {
    const auto format = static_cast<AVPixelFormat>(f->format);
    if (rotation_ != 0 && rotatable(format, f)) {
      const AVPixFmtDescriptor* desc = av_pix_fmt_desc_get(format);
      const int planes = av_pix_fmt_count_planes(format);
      std::vector<at::Tensor> turned;
      const uint8_t* data[4] = {nullptr, nullptr, nullptr, nullptr};
      int stride[4] = {0, 0, 0, 0};
      for (int p = 0; p < planes; ++p) {
        const bool chroma = (p == 1 || p == 2) && desc->nb_components >= 3;
        const int64_t w = chroma ? AV_CEIL_RSHIFT(f->width, desc->log2_chroma_w) : f->width;
        const int64_t h = chroma ? AV_CEIL_RSHIFT(f->height, desc->log2_chroma_h) : f->height;
        auto plane = at::from_blob(f->data[p], {h, w}, {f->linesize[p], 1}, at::kByte);
        turned.push_back(upright(plane).contiguous());
        data[p] = turned.back().data_ptr<uint8_t>();
        stride[p] = static_cast<int>(turned.back().size(1));
      }
      const bool swap = rotation_ == 90 || rotation_ == 270;
      return scale(f, swap ? f->height : f->width, swap ? f->width : f->height, format, data, stride, width_, height_);
    }
    // Other formats: scale to the stored shape, then turn the RGB picture.
    const bool swap = rotation_ == 90 || rotation_ == 270;
    return upright(scale(f, f->width, f->height, format, f->data, f->linesize, swap ? height_ : width_,
                         swap ? width_ : height_))
        .contiguous();
  }

 private:
  // Planar 8-bit formats whose planes can be turned one by one (chroma subsampled alike both ways, as
  // FFmpeg's transpose filter requires).
  static bool rotatable(AVPixelFormat format, const AVFrame* f) {
    const AVPixFmtDescriptor* desc = av_pix_fmt_desc_get(format);
    if (desc == nullptr || (desc->flags & AV_PIX_FMT_FLAG_PLANAR) == 0 ||
        (desc->flags & (AV_PIX_FMT_FLAG_PAL | AV_PIX_FMT_FLAG_BITSTREAM | AV_PIX_FMT_FLAG_HWACCEL)) != 0 ||
        desc->log2_chroma_w != desc->log2_chroma_h || av_pix_fmt_count_planes(format) != desc->nb_components) {
      return false;
    }
    for (int c = 0; c < desc->nb_components; ++c) {
      if (desc->comp[c].depth != 8 || desc->comp[c].step != 1 || desc->comp[c].plane != c || f->linesize[c] <= 0) return false;
    }
    return true;
  }

  // [H, W, ...] turned clockwise by the stream's rotation.
  at::Tensor upright(const at::Tensor& x) const {
    switch (rotation_) {
      case 90: return x.transpose(0, 1).flip({1});
      case 180: return x.flip({0, 1});
      case 270: return x.transpose(0, 1).flip({0});
      default: return x;
    }
  }

  at::Tensor scale(const AVFrame* f, int src_w, int src_h, AVPixelFormat format, const uint8_t* const* data,
                   const int* stride, int64_t out_w, int64_t out_h) {
    // sws_getCachedContext would rebuild the context for every full-range (yuvj) frame: it compares with the
    // format the context rewrote internally. Keyed here on what was asked instead.
    const std::array<int, 5> shape{src_w, src_h, static_cast<int>(format), static_cast<int>(out_w), static_cast<int>(out_h)};
    if (!sws_ || shape != shape_) {
      sws_.reset(sws_getContext(src_w, src_h, format, static_cast<int>(out_w), static_cast<int>(out_h), AV_PIX_FMT_RGB24,
                                SWS_BILINEAR, nullptr, nullptr, nullptr));
      if (!sws_) fail(file_, "cannot convert its pixel format");
      shape_ = shape;
      configured_ = false;
    }
    if (!configured_ || f->colorspace != colorspace_ || f->color_range != range_) {
      // The frame's matrix (BT.709 for HD phone video) and range, as FFmpeg's scale filter takes them.
      int* inv_table = nullptr;
      int* table = nullptr;
      int src_range = 0, dst_range = 0, brightness = 0, contrast = 0, saturation = 0;
      if (sws_getColorspaceDetails(sws_.get(), &inv_table, &src_range, &table, &dst_range, &brightness, &contrast,
                                   &saturation) >= 0) {
        if (f->color_range != AVCOL_RANGE_UNSPECIFIED) src_range = f->color_range == AVCOL_RANGE_JPEG ? 1 : 0;
        sws_setColorspaceDetails(sws_.get(), sws_getCoefficients(f->colorspace), src_range, table, dst_range, brightness,
                                 contrast, saturation);
      }
      configured_ = true;
      colorspace_ = f->colorspace;
      range_ = f->color_range;
    }
    auto rgb = at::empty({out_h, out_w, 3}, at::kByte);
    uint8_t* dst[4] = {rgb.data_ptr<uint8_t>(), nullptr, nullptr, nullptr};
    int dst_stride[4] = {static_cast<int>(out_w * 3), 0, 0, 0};
    sws_scale(sws_.get(), data, stride, 0, src_h, dst, dst_stride);
    return rgb;
  }

  std::filesystem::path file_;
  int rotation_;
  int64_t width_, height_;
  std::unique_ptr<SwsContext, SwsDeleter> sws_;
  std::array<int, 5> shape_{};
  bool configured_ = false;
  AVColorSpace colorspace_ = AVCOL_SPC_UNSPECIFIED;
  AVColorRange range_ = AVCOL_RANGE_UNSPECIFIED;
};

}  // namespace

VideoInfo VideoReader::probe(const std::filesystem::path& file) {
  Opened o = open_stream(file, AVMEDIA_TYPE_VIDEO, 1);
  read_only_stream(o);
  VideoInfo info = info_of(o);
  const auto from_container = index_from_container(o);
  const auto idx = from_container ? *from_container : index_packets(o);
  if (!idx.ts.empty()) info.frames = static_cast<int64_t>(idx.ts.size());
  return info;
}

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

namespace {

// Decodes the uniformly sampled frames of `idx`; nullopt when a packet contradicts a container's index.
std::optional<VideoFrames> take_frames(Opened& o, const PacketIndex& idx, VideoFrames out, int64_t wanted, int64_t width,
                                       int64_t height, const std::filesystem::path& file) {
  if (idx.ts.empty()) fail(file, "no decodable video frames");
  out.info.frames = static_cast<int64_t>(idx.ts.size());
  const AVRational time_base = o.stream->time_base;
  const double start = idx.timed ? seconds(o.stream->start_time != AV_NOPTS_VALUE ? o.stream->start_time : idx.ts.front(), time_base) : 0.0;
  const double fps = out.info.fps > 0 ? out.info.fps : 1.0;
  out.indices = VideoReader::uniform_indices(out.info.frames, wanted);
  std::vector<int64_t> target_ts;
  for (int64_t i : out.indices) target_ts.push_back(idx.ts[static_cast<size_t>(i)]);

  FrameScaler to_rgb(file, out.info.rotation, width, height);
  std::unique_ptr<AVFrame, FrameDeleter> frame(av_frame_alloc());
  std::unique_ptr<AVPacket, PacketDeleter> packet(av_packet_alloc());
  bool eof = false, flushed = false, contradicted = false;
  // Draining: once the current target's packet is in and the next target lies past a seek, the decoder
  // is told the stream ends instead of being fed packets whose frames the seek would throw away (with
  // frame threads, one per thread). Such a decoder must seek before it decodes again.
  bool drain_after_target = false, target_sent = false, drained = false;
  int64_t target_now = AV_NOPTS_VALUE;
  int64_t counted = 0;  // frames out of the decoder, for untimed streams (never sought)

  // Decodes the next frame; false at the end of the stream. A packet that holds no target is decoded
  // only if other frames refer to it: the decoder drops non-reference frames (skip_frame), which the
  // pictures taken do not depend on.
  auto next_frame = [&]() -> bool {
    while (true) {
      const int rc = avcodec_receive_frame(o.codec.get(), frame.get());
      if (rc == 0) {
        ++out.decoded;
        return true;
      }
      if (rc == AVERROR_EOF) return false;
      if (rc != AVERROR(EAGAIN)) fail(file, "decoding failed: " + av_error(rc));
      if (eof) {
        if (flushed) return false;
        avcodec_send_packet(o.codec.get(), nullptr);
        flushed = true;
        continue;
      }
      if (drain_after_target && target_sent) {
        avcodec_send_packet(o.codec.get(), nullptr);
        eof = flushed = drained = true;
        continue;
      }
      if (av_read_frame(o.format.get(), packet.get()) < 0) {
        eof = true;
        continue;
      }
      if (packet->stream_index == o.index) {
        if (idx.from_container &&
            (packet->pts != packet->dts || !std::binary_search(idx.ts.begin(), idx.ts.end(), packet->dts))) {
          contradicted = true;
          av_packet_unref(packet.get());
          return false;
        }
        if (idx.timed) {
          const bool target = std::binary_search(target_ts.begin(), target_ts.end(), packet_time(packet.get()));
          o.codec->skip_frame = target ? AVDISCARD_DEFAULT : AVDISCARD_NONREF;
          target_sent = target_sent || packet_time(packet.get()) == target_now;
        }
        // A corrupt packet is skipped; a stream that never yields a frame ends in "no decodable frames".
        (void)avcodec_send_packet(o.codec.get(), packet.get());
      }
      av_packet_unref(packet.get());
    }
  };
  // Position (presentation order) of a decoded frame's timestamp.
  auto position_of = [&](int64_t ts) {
    const auto at = std::lower_bound(idx.ts.begin(), idx.ts.end(), ts) - idx.ts.begin();
    return std::min<int64_t>(at, static_cast<int64_t>(idx.ts.size()) - 1);
  };

  // A seek flushes the decoder: the frames in flight on its threads are lost, and it refills. Seek when
  // the keyframe before the target lies further ahead than that, else decode on through.
  const int64_t seek_cost = std::max(1, o.codec->thread_count) + 1;
  int64_t decoded = -1;  // position of the newest frame out of the decoder
  at::Tensor last;       // the newest converted frame
  int64_t last_ts = 0;
  std::vector<at::Tensor> frames;
  for (size_t k = 0; k < out.indices.size(); ++k) {
    const int64_t t = out.indices[k], ts = target_ts[k];
    // Drain after this target when the next one will seek anyway (or there is none). If the drained
    // decoder gives no frame at or after the target (its packet was lost), the target is decoded again
    // without draining, so that the next decodable frame stands in for it as it did before.
    const size_t next = k + 1;
    drain_after_target = idx.timed && (next >= out.indices.size() ||
                                       idx.key_before[static_cast<size_t>(out.indices[next])] > t + seek_cost);
    for (int attempt = 0; attempt < 2 && (!last.defined() || last_ts < ts); ++attempt) {
      const int64_t key = idx.key_before[static_cast<size_t>(t)];
      if (idx.timed && (drained || (key > decoded && (key - decoded > seek_cost || (eof && flushed))))) {
        if (av_seek_frame(o.format.get(), o.index, idx.ts[static_cast<size_t>(key)], AVSEEK_FLAG_BACKWARD) >= 0) {
          avcodec_flush_buffers(o.codec.get());
          eof = flushed = drained = false;
          decoded = key - 1;
        } else if (drained) {  // a drained decoder cannot go on: start again from the first packet
          o = open_stream(file, AVMEDIA_TYPE_VIDEO, o.codec->thread_count);
          read_only_stream(o);
          eof = flushed = drained = false;
          decoded = -1;
        }
      }
      target_sent = false;
      target_now = ts;
      while (next_frame()) {
        int64_t got = idx.timed ? frame_time(frame.get()) : counted++;
        if (got == AV_NOPTS_VALUE) got = decoded >= 0 ? idx.ts[static_cast<size_t>(decoded)] + 1 : idx.ts.front();
        decoded = std::max(decoded, position_of(got));
        if (got < ts) continue;  // before the target: not converted
        last = to_rgb(frame.get());
        last_ts = got;
        av_frame_unref(frame.get());
        break;
      }
      if (contradicted) return std::nullopt;
      if (!drained) break;  // not drained: the stream itself ended, nothing to retry
      drain_after_target = false;
    }
    if (!last.defined()) break;  // the stream ended before any target: nothing decodable
    frames.push_back(last);      // past the real end or a lost frame: the newest frame there is
    out.timestamps.push_back(idx.timed ? seconds(last_ts, time_base) - start : static_cast<double>(last_ts) / fps);
  }
  if (frames.empty()) fail(file, "no decodable video frames");
  out.indices.resize(frames.size());
  out.frames = at::stack(frames, 0);
  return out;
}

}  // namespace

VideoFrames VideoReader::sample_uniform(const std::filesystem::path& file, int64_t wanted, int64_t width, int64_t height,
                                        int threads) {
  if (wanted <= 0 || width <= 0 || height <= 0) {
    throw Error(ErrorKind::InvalidArgument, "video: frame count and size must be positive");
  }
  Opened o = open_stream(file, AVMEDIA_TYPE_VIDEO, threads);
  read_only_stream(o);
  VideoFrames info;
  info.info = info_of(o);
  if (auto idx = index_from_container(o)) {
    if (auto got = take_frames(o, *idx, info, wanted, width, height, file)) return std::move(*got);
    o = open_stream(file, AVMEDIA_TYPE_VIDEO, threads);  // the index was not the presentation order
    read_only_stream(o);
  }
  const PacketIndex idx = index_packets(o);
  rewind(o, idx, file, threads);
  return std::move(*take_frames(o, idx, info, wanted, width, height, file));
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
