// ImageReader: formats, orientation-free basics and every kind of bad file refused with a clear error.
#include <gtest/gtest.h>
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <opencv2/imgcodecs.hpp>

#include <array>
#include <cstring>
#include <vector>

#include "lego/sdk/image/clip_preprocess.h"
#include "lego/sdk/image/resample.h"
#include "lego/sdk/io/image_reader.h"
#include "test_files.h"

namespace lego::io {
namespace {

using lego::testing::expect_error;
using lego::testing::TempDir;
using lego::testing::write_bytes;

cv::Mat gradient(int w, int h) {
  cv::Mat m(h, w, CV_8UC3);
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x) m.at<cv::Vec3b>(y, x) = cv::Vec3b(static_cast<uchar>(x), static_cast<uchar>(y), 50);
  return m;
}

// PNG chunk CRC (ISO 3309), so that edited headers stay otherwise valid.
uint32_t crc32(const unsigned char* data, size_t n) {
  uint32_t c = 0xFFFFFFFFu;
  for (size_t i = 0; i < n; ++i) {
    c ^= data[i];
    for (int k = 0; k < 8; ++k) c = (c >> 1) ^ (0xEDB88320u & (0u - (c & 1u)));
  }
  return ~c;
}

// A PNG whose IHDR claims `w` x `h`, with a correct CRC.
std::string png_claiming(std::string png, uint32_t w, uint32_t h) {
  auto put = [&](size_t at, uint32_t v) {
    for (int i = 0; i < 4; ++i) png[at + i] = static_cast<char>((v >> (24 - 8 * i)) & 0xFF);
  };
  put(16, w);
  put(20, h);
  put(29, crc32(reinterpret_cast<const unsigned char*>(png.data() + 12), 17));  // "IHDR" + 13 data bytes
  return png;
}

std::string encoded(const cv::Mat& m, const std::string& ext) {
  std::vector<uchar> buf;
  cv::imencode(ext, m, buf);
  return std::string(buf.begin(), buf.end());
}

TEST(ImageReader, ReadsCommonFormatsAsRgb) {
  TempDir dir;
  const auto img = gradient(40, 30);
  for (const std::string ext : {".png", ".jpg", ".bmp", ".webp", ".tiff"}) {
    write_bytes(dir / ("a" + ext), encoded(img, ext));
    const auto got = ImageReader::read(dir / ("a" + ext));
    EXPECT_EQ(got.width, 40) << ext;
    EXPECT_EQ(got.height, 30) << ext;
    EXPECT_EQ(got.rgb.sizes(), (std::vector<int64_t>{30, 40, 3})) << ext;
  }
  // OpenCV's BGR -> RGB: the constant 50 was stored last (red), so it comes first; blue was x.
  const auto png = ImageReader::read(dir / "a.png");
  EXPECT_EQ(png.rgb[3][7][0].item<uint8_t>(), 50);
  EXPECT_EQ(png.rgb[3][7][1].item<uint8_t>(), 3);
  EXPECT_EQ(png.rgb[3][7][2].item<uint8_t>(), 7);
}

TEST(ImageReader, ReadsGreyscaleSixteenBitAndAlphaAsThreeChannels) {
  TempDir dir;
  cv::Mat grey(20, 10, CV_8UC1, cv::Scalar(77));
  write_bytes(dir / "g.png", encoded(grey, ".png"));
  cv::Mat deep(20, 10, CV_16UC3, cv::Scalar(65535, 0, 256 * 100));
  write_bytes(dir / "d.png", encoded(deep, ".png"));
  cv::Mat alpha(20, 10, CV_8UC4, cv::Scalar(1, 2, 3, 0));
  write_bytes(dir / "a.png", encoded(alpha, ".png"));
  EXPECT_EQ(ImageReader::read(dir / "g.png").rgb[5][5][1].item<uint8_t>(), 77);
  EXPECT_EQ(ImageReader::read(dir / "d.png").rgb[0][0][2].item<uint8_t>(), 255);  // 16-bit blue 65535
  EXPECT_EQ(ImageReader::read(dir / "d.png").rgb[0][0][0].item<uint8_t>(), 100);  // 16-bit red 25600
  EXPECT_EQ(ImageReader::read(dir / "a.png").rgb.size(2), 3);
}

TEST(ImageReader, ReadsAUnicodePath) {
  TempDir dir;
  write_bytes(dir / "ünïcødé 图片.png", encoded(gradient(8, 8), ".png"));
  EXPECT_EQ(ImageReader::read(dir / "ünïcødé 图片.png").width, 8);
}

TEST(ImageReader, RefusesAFileThatIsNotAnImage) {
  TempDir dir;
  write_bytes(dir / "text.jpg", "just some text, not a JPEG");
  expect_error([&] { ImageReader::read(dir / "text.jpg"); }, ErrorKind::Format, {"text.jpg"});
}

TEST(ImageReader, RefusesATruncatedJpeg) {
  TempDir dir;
  const auto jpg = encoded(gradient(64, 64), ".jpg");
  write_bytes(dir / "cut.jpg", jpg.substr(0, jpg.size() / 2));
  expect_error([&] { ImageReader::read(dir / "cut.jpg"); }, ErrorKind::Format, {"cut.jpg", "truncated"});
}

TEST(ImageReader, RefusesEmptyAndZeroSizedImages) {
  TempDir dir;
  write_bytes(dir / "empty.png", "");
  expect_error([&] { ImageReader::read(dir / "empty.png"); }, ErrorKind::Format, {"empty.png"});
  // A PNG header claiming 0 x 0 pixels.
  write_bytes(dir / "zero.png", png_claiming(encoded(gradient(4, 4), ".png"), 0, 0));
  expect_error([&] { ImageReader::read(dir / "zero.png"); }, ErrorKind::Format, {"zero.png"});
}

TEST(ImageReader, RefusesAHugeHeaderWithoutAllocating) {
  TempDir dir;
  // A PNG header claiming 100000 x 100000 pixels (30 GB decoded): refused from the header.
  write_bytes(dir / "huge.png", png_claiming(encoded(gradient(4, 4), ".png"), 100000, 100000));
  expect_error([&] { ImageReader::read(dir / "huge.png"); }, ErrorKind::Format, {"huge.png"});
}

TEST(ImageReader, RefusesMissingFilesAndDirectories) {
  TempDir dir;
  expect_error([&] { ImageReader::read(dir / "none.png"); }, ErrorKind::NotFound, {"none.png"});
  expect_error([&] { ImageReader::read(dir.path()); }, ErrorKind::InvalidArgument, {"directory"});
}

at::Tensor random_image(int64_t h, int64_t w, uint64_t seed) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  return at::randint(0, 256, {h, w, 3}, gen, at::kByte);
}

image::ResizeWindow whole(int64_t w, int64_t h) { return {w, h, 0, 0, w, h}; }

TEST(ResizeBicubicPil, VirtualPaddingEqualsTheBuiltCanvas) {
  // A tall and a wide image on a square canvas: reading the fill where there is no image must give the
  // same pixels as resizing the square built in memory, for downscaling and upscaling.
  const std::array<uint8_t, 3> fill{122, 116, 104};
  for (const auto& [h, w, out] : std::vector<std::array<int64_t, 3>>{{57, 13, 20}, {9, 40, 33}, {30, 7, 64}}) {
    const auto img = random_image(h, w, static_cast<uint64_t>(h * w));
    const int64_t side = std::max(h, w);
    auto square = at::empty({side, side, 3}, at::kByte);
    for (int c = 0; c < 3; ++c) square.select(2, c).fill_(fill[c]);
    square.narrow(0, (side - h) / 2, h).narrow(1, (side - w) / 2, w).copy_(img);
    const auto built = image::resize_bicubic_pil(square, {side, side, 0, 0, fill}, whole(out, out));
    const auto virt = image::resize_bicubic_pil(img, {side, side, (side - w) / 2, (side - h) / 2, fill}, whole(out, out));
    EXPECT_TRUE(at::equal(built, virt)) << h << "x" << w << " -> " << out;
  }
}

TEST(ResizeBicubicPil, AWindowIsThatPartOfTheWholeResize) {
  const auto img = random_image(41, 67, 3);
  const image::Canvas canvas{67, 41, 0, 0, {0, 0, 0}};
  const auto full = image::resize_bicubic_pil(img, canvas, whole(30, 19));
  const auto part = image::resize_bicubic_pil(img, canvas, {30, 19, 7, 4, 12, 9});
  EXPECT_TRUE(at::equal(part, full.narrow(0, 4, 9).narrow(1, 7, 12)));
}

TEST(ResizeBicubicPil, SameSizeIsTheImageAndAConstantStaysConstant) {
  const auto img = random_image(23, 31, 5);
  EXPECT_TRUE(at::equal(image::resize_bicubic_pil(img, {31, 23, 0, 0, {0, 0, 0}}, whole(31, 23)), img));
  const auto grey = at::full({50, 80, 3}, 77, at::kByte);
  const auto small = image::resize_bicubic_pil(grey, {80, 50, 0, 0, {0, 0, 0}}, whole(13, 8));
  EXPECT_TRUE(at::equal(small, at::full({8, 13, 3}, 77, at::kByte)));
}

TEST(ResizeBicubicPil, BadGeometryIsRefused) {
  const auto img = random_image(4, 6, 1);
  expect_error([&] { image::resize_bicubic_pil(img, {5, 4, 0, 0, {}}, whole(2, 2)); }, ErrorKind::InvalidArgument, {"canvas"});
  expect_error([&] { image::resize_bicubic_pil(img, {6, 4, 0, 0, {}}, {2, 2, 1, 1, 2, 2}); }, ErrorKind::InvalidArgument, {"window"});
  const int64_t huge = image::kMaxResizeSide + 1;
  expect_error([&] { image::resize_bicubic_pil(img, {huge, 4, 0, 0, {}}, whole(2, 2)); }, ErrorKind::InvalidArgument,
               {std::to_string(huge)});
  expect_error([&] { image::resize_bicubic_pil(img.to(at::kFloat), {6, 4, 0, 0, {}}, whole(2, 2)); }, ErrorKind::InvalidArgument,
               {"uint8"});
}

TEST(ClipPreprocess, PadsWithTheMeanColourAndNormalises) {
  Image img;
  img.width = 4;
  img.height = 2;
  img.rgb = at::full({2, 4, 3}, 255, at::kByte);
  image::ClipPreprocessOptions o;
  o.size = 4;
  const auto out = image::clip_preprocess(img, o);
  EXPECT_EQ(out.sizes(), (std::vector<int64_t>{3, 4, 4}));
  // Row 0 is padding: (122/255 - mean) / std; row 1 is the white image: (1 - mean) / std.
  EXPECT_NEAR(out[0][0][0].item<float>(), (122.0 / 255 - o.mean[0]) / o.std[0], 1e-5);
  EXPECT_NEAR(out[0][1][0].item<float>(), (1.0 - o.mean[0]) / o.std[0], 1e-5);
}

}  // namespace
}  // namespace lego::io
