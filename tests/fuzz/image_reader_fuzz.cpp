// Fuzzes io::ImageReader::read (OpenCV decoders behind lego's checks) and the CLIP preprocessing of what
// it returns, at a small size. The pixel budget is lowered to 4 Mpixel for the campaign so that a header
// claiming a huge image costs little; the check that enforces it is the reader's own.
#include <cstdlib>

#include "fuzz_support.h"
#include "lego/sdk/image/clip_preprocess.h"
#include "lego/sdk/io/image_reader.h"

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  setenv("OPENCV_IO_MAX_IMAGE_PIXELS", "4194304", /*overwrite=*/1);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // The reader decides by content; the name only has to be one of its extensions.
  const auto file = lego::fuzz::write_input("input.png", data, size);
  lego::io::Image image;
  if (!lego::fuzz::refused_or_done([&] { image = lego::io::ImageReader::read(file); })) return 0;
  lego::fuzz::check(image.width > 0 && image.height > 0, "image with an empty side");
  lego::fuzz::check(image.rgb.sizes() == at::IntArrayRef({image.height, image.width, 3}) &&
                        image.rgb.scalar_type() == at::kByte,
                    "pixels are not [height, width, 3] uint8");
  lego::image::ClipPreprocessOptions options;
  options.size = 8;
  options.pad_to_square = size % 2 == 0;
  at::Tensor pixels;
  if (!lego::fuzz::refused_or_done([&] { pixels = lego::image::clip_preprocess(image, options); })) return 0;
  lego::fuzz::check(pixels.sizes() == at::IntArrayRef({3, 8, 8}), "preprocessed image is not [3, 8, 8]");
  lego::fuzz::check(pixels.isfinite().all().item<bool>(), "preprocessed image has non-finite values");
  return 0;
}
