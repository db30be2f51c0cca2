#include "lego/sdk/io/video_writer.h"

extern "C" {
#include <libavcodec/avcodec.h>
#include <libavformat/avformat.h>
#include <libavutil/mem.h>
#include <libavutil/opt.h>
#include <libswscale/swscale.h>
}

#include <ATen/ATen.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "ffmpeg_setup.h"
#include "lego/sdk/error.h"
#include "lego/sdk/files.h"

namespace lego::io {
namespace {

constexpr int kAvioBufferBytes = 1 << 16;
// The muxed file is kept in memory until finish(); beyond this it is refused rather than grown.
constexpr size_t kMaxVideoBytes = size_t{2} << 30;

std::string av_error(int code) {
  char buf[AV_ERROR_MAX_STRING_SIZE] = {0};
  av_strerror(code, buf, sizeof buf);
  return buf;
}

// The MP4 muxer seeks back to patch sizes: an in-memory file that can.
struct MemoryFile {
  std::vector<uint8_t> bytes;
  size_t pos = 0;

  static int write(void* opaque, uint8_t* buf, int size) {
    auto* f = static_cast<MemoryFile*>(opaque);
    if (size < 0 || f->pos + static_cast<size_t>(size) > kMaxVideoBytes) return AVERROR(EFBIG);
    if (f->pos + static_cast<size_t>(size) > f->bytes.size()) f->bytes.resize(f->pos + static_cast<size_t>(size));
    std::memcpy(f->bytes.data() + f->pos, buf, static_cast<size_t>(size));
    f->pos += static_cast<size_t>(size);
    return size;
  }

  static int64_t seek(void* opaque, int64_t offset, int whence) {
    auto* f = static_cast<MemoryFile*>(opaque);
    const auto size = static_cast<int64_t>(f->bytes.size());
    int64_t to = 0;
    switch (whence & ~AVSEEK_FORCE) {
      case AVSEEK_SIZE:
        return size;
      case SEEK_SET:
        to = offset;
        break;
      case SEEK_CUR:
        to = static_cast<int64_t>(f->pos) + offset;
        break;
      case SEEK_END:
        to = size + offset;
        break;
      default:
        return AVERROR(EINVAL);
    }
    if (to < 0 || to > static_cast<int64_t>(kMaxVideoBytes)) return AVERROR(EINVAL);
    f->pos = static_cast<size_t>(to);
    return to;
  }
};

}  // namespace

struct VideoWriter::Impl {
  std::filesystem::path out;
  int width = 0, height = 0;          // of the frames given
  int coded_width = 0, coded_height = 0;  // even
  MemoryFile file;
  AVFormatContext* format = nullptr;
  AVIOContext* io = nullptr;
  AVCodecContext* codec = nullptr;
  AVStream* stream = nullptr;
  SwsContext* sws = nullptr;
  AVFrame* yuv = nullptr;
  AVPacket* packet = nullptr;
  std::vector<uint8_t> rgb;  // one padded frame
  int64_t frames = 0;
  bool finished = false;

  [[noreturn]] void fail(const std::string& what, int code = 0) const {
    throw Error(ErrorKind::Io, out.string() + ": " + what + (code != 0 ? " (" + av_error(code) + ")" : ""));
  }

  ~Impl() {
    av_packet_free(&packet);
    av_frame_free(&yuv);
    sws_freeContext(sws);
    avcodec_free_context(&codec);
    if (format != nullptr) avformat_free_context(format);
    if (io != nullptr) {
      av_freep(&io->buffer);
      avio_context_free(&io);
    }
  }

  // Sends `frame` (null: the end) to the encoder and muxes what comes out.
  void encode(const AVFrame* frame) {
    int rc = avcodec_send_frame(codec, frame);
    if (rc < 0) fail("cannot encode a frame", rc);
    while ((rc = avcodec_receive_packet(codec, packet)) >= 0) {
      packet->duration = 1;  // every frame lasts 1 / fps: the last one counts in the video's duration
      av_packet_rescale_ts(packet, codec->time_base, stream->time_base);
      packet->stream_index = stream->index;
      rc = av_interleaved_write_frame(format, packet);
      if (rc < 0) fail("cannot write a frame", rc);
    }
    if (rc != AVERROR(EAGAIN) && rc != AVERROR_EOF) fail("cannot encode a frame", rc);
  }
};

VideoWriter::VideoWriter(const std::filesystem::path& out, int width, int height, int fps) : impl_(std::make_unique<Impl>()) {
  quiet_ffmpeg_once();
  auto& m = *impl_;
  m.out = out;
  if (width < 2 || height < 2 || width > 8192 || height > 8192) {
    throw Error(ErrorKind::InvalidArgument, out.string() + ": a video of " + std::to_string(width) + " x " + std::to_string(height) +
                                                " pixels (each side 2..8192)");
  }
  if (fps < 1 || fps > 240) throw Error(ErrorKind::InvalidArgument, out.string() + ": " + std::to_string(fps) + " fps (1..240)");
  m.width = width, m.height = height;
  m.coded_width = (width + 1) / 2 * 2, m.coded_height = (height + 1) / 2 * 2;
  const AVCodec* h264 = avcodec_find_encoder_by_name("libx264");
  if (h264 == nullptr) throw Error(ErrorKind::Unsupported, out.string() + ": this FFmpeg has no libx264 encoder");

  int rc = avformat_alloc_output_context2(&m.format, nullptr, "mp4", nullptr);
  if (rc < 0 || m.format == nullptr) m.fail("cannot make an MP4 muxer", rc);
  m.format->flags |= AVFMT_FLAG_BITEXACT;  // no library versions or times in the file
  auto* buffer = static_cast<unsigned char*>(av_malloc(kAvioBufferBytes));
  if (buffer == nullptr) m.fail("out of memory");
  m.io = avio_alloc_context(buffer, kAvioBufferBytes, 1, &m.file, nullptr, &MemoryFile::write, &MemoryFile::seek);
  if (m.io == nullptr) {
    av_free(buffer);
    m.fail("out of memory");
  }
  m.format->pb = m.io;
  m.format->flags |= AVFMT_FLAG_CUSTOM_IO;

  m.stream = avformat_new_stream(m.format, nullptr);
  m.codec = avcodec_alloc_context3(h264);
  if (m.stream == nullptr || m.codec == nullptr) m.fail("out of memory");
  m.codec->width = m.coded_width;
  m.codec->height = m.coded_height;
  m.codec->pix_fmt = AV_PIX_FMT_YUV420P;
  m.codec->time_base = AVRational{1, fps};
  m.codec->framerate = AVRational{fps, 1};
  m.codec->gop_size = fps;
  m.codec->thread_count = 1;  // x264's output depends on its thread count
  m.codec->flags |= AV_CODEC_FLAG_BITEXACT;
  if ((m.format->oformat->flags & AVFMT_GLOBALHEADER) != 0) m.codec->flags |= AV_CODEC_FLAG_GLOBAL_HEADER;
  av_opt_set(m.codec->priv_data, "preset", "veryfast", 0);
  av_opt_set(m.codec->priv_data, "crf", "18", 0);
  rc = avcodec_open2(m.codec, h264, nullptr);
  if (rc < 0) m.fail("cannot open the H.264 encoder", rc);
  rc = avcodec_parameters_from_context(m.stream->codecpar, m.codec);
  if (rc < 0) m.fail("cannot set up the video stream", rc);
  m.stream->time_base = m.codec->time_base;
  rc = avformat_write_header(m.format, nullptr);
  if (rc < 0) m.fail("cannot start the MP4", rc);

  m.sws = sws_getContext(m.coded_width, m.coded_height, AV_PIX_FMT_RGB24, m.coded_width, m.coded_height, AV_PIX_FMT_YUV420P,
                         SWS_BILINEAR | SWS_ACCURATE_RND | SWS_BITEXACT, nullptr, nullptr, nullptr);
  m.yuv = av_frame_alloc();
  m.packet = av_packet_alloc();
  if (m.sws == nullptr || m.yuv == nullptr || m.packet == nullptr) m.fail("out of memory");
  m.yuv->format = AV_PIX_FMT_YUV420P;
  m.yuv->width = m.coded_width;
  m.yuv->height = m.coded_height;
  rc = av_frame_get_buffer(m.yuv, 0);
  if (rc < 0) m.fail("out of memory", rc);
  m.rgb.resize(static_cast<size_t>(m.coded_width) * static_cast<size_t>(m.coded_height) * 3);
}

VideoWriter::~VideoWriter() = default;

void VideoWriter::write(const at::Tensor& rgb) {
  auto& m = *impl_;
  if (m.finished) m.fail("a frame written after finish()");
  if (rgb.dim() != 3 || rgb.size(0) != m.height || rgb.size(1) != m.width || rgb.size(2) != 3 || rgb.scalar_type() != at::kByte) {
    throw Error(ErrorKind::InvalidArgument, m.out.string() + ": a frame is [" + std::to_string(m.height) + ", " + std::to_string(m.width) +
                                                ", 3] uint8, got " + std::to_string(rgb.dim()) + " dimensions of sizes " +
                                                c10::str(rgb.sizes()) + " (" + std::string(c10::toString(rgb.scalar_type())) + ")");
  }
  const auto pixels = rgb.contiguous();
  const auto* src = pixels.data_ptr<uint8_t>();
  const auto row = static_cast<size_t>(m.width) * 3, coded_row = static_cast<size_t>(m.coded_width) * 3;
  for (int y = 0; y < m.coded_height; ++y) {
    const uint8_t* from = src + static_cast<size_t>(std::min(y, m.height - 1)) * row;
    uint8_t* to = m.rgb.data() + static_cast<size_t>(y) * coded_row;
    std::memcpy(to, from, row);
    if (m.coded_width != m.width) std::memcpy(to + row, from + row - 3, 3);  // repeat the last column
  }
  int rc = av_frame_make_writable(m.yuv);
  if (rc < 0) m.fail("out of memory", rc);
  const uint8_t* planes[1] = {m.rgb.data()};
  const int strides[1] = {static_cast<int>(coded_row)};
  sws_scale(m.sws, planes, strides, 0, m.coded_height, m.yuv->data, m.yuv->linesize);
  m.yuv->pts = m.frames++;
  m.encode(m.yuv);
}

void VideoWriter::finish() {
  auto& m = *impl_;
  if (m.finished) return;
  m.finished = true;
  if (m.frames == 0) m.fail("a video needs at least one frame");
  m.encode(nullptr);
  int rc = av_write_trailer(m.format);
  if (rc < 0) m.fail("cannot finish the MP4", rc);
  avio_flush(m.io);
  if (m.io->error < 0) m.fail("cannot write the MP4", m.io->error);
  AtomicFile file(m.out);
  file.write(m.file.bytes.data(), m.file.bytes.size());
  file.commit();
}

}  // namespace lego::io
