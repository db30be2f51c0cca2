// The CPU decoding kernels against the memory's bandwidth and against libtorch, on one decoder layer's
// matrices (7B shapes by default: q/k/v fused [12288, 4096], o [4096, 4096], gate/up fused [22016, 4096],
// down [4096, 11008]), cycled through enough layers that nothing stays in cache.
//
//   cpu_kernels [--threads 2] [--layers 4] [--reps 5] [--hidden 4096] [--intermediate 11008] [--rows 1]
//               [--mapped DIR]
//
// Prints, per weight format, ms per layer and the bytes of weights read per second, beside a plain read of
// the same bytes (the roofline a batch-1 decoding step can reach). --rows M multiplies M rows of
// activations (a prompt of M tokens; the kernels take them 8 at a time) and adds GFLOPS and the SDK's
// bf16 product (lego::nn::linear, float32 from up-cast copies on CPUs without native bf16). --mapped DIR
// writes the bf16 matrices to a scratch file in DIR (removed at once, kept open) and reads them from its
// mapped page-cache pages, as `lego generate` reads a model's safetensors, instead of from anonymous memory:
// the two can read at different speeds (the page cache may hold a file in large folios).
#include <ATen/Parallel.h>
#include <torch/torch.h>

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "lego/llm/quant.h"
#include "lego/sdk/nn/linear.h"

namespace {

using Clock = std::chrono::steady_clock;
using lego::llm::QuantFormat;
using lego::llm::WeightFormat;

double best_of(int reps, const std::function<void()>& run) {
  run();  // warm-up: page faults, thread pool
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    const auto t0 = Clock::now();
    run();
    best = std::min(best, std::chrono::duration<double>(Clock::now() - t0).count());
  }
  return best;
}

}  // namespace

int main(int argc, char** argv) {
  int threads = 2, layers = 4, reps = 5;
  int64_t m_rows = 1;
  int64_t hidden = 4096, inter = 11008;
  std::string mapped_dir;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    const long long v = std::atoll(argv[i + 1]);
    if (a == "--mapped") mapped_dir = argv[i + 1];
    else if (a == "--threads") threads = static_cast<int>(v);
    else if (a == "--layers") layers = static_cast<int>(v);
    else if (a == "--reps") reps = static_cast<int>(v);
    else if (a == "--hidden") hidden = v;
    else if (a == "--intermediate") inter = v;
    else if (a == "--rows") m_rows = v;
    else {
      std::fprintf(stderr, "unknown flag %s\n", a.c_str());
      return 2;
    }
  }
  if (threads < 1 || layers < 1 || reps < 1 || hidden < 32 || inter < 32 || hidden % 32 || inter % 32 || m_rows < 1 || m_rows > 4096) {
    std::fprintf(stderr, "flags out of range (sizes: multiples of 32)\n");
    return 2;
  }
  at::set_num_threads(threads);
  torch::NoGradGuard no_grad;
  torch::manual_seed(0);
  const std::vector<std::pair<int64_t, int64_t>> shapes = {{3 * hidden, hidden}, {hidden, hidden}, {2 * inter, hidden}, {hidden, inter}};
  std::vector<std::vector<torch::Tensor>> bf16(layers), q8(layers), q4(layers), q8_panels(layers), q4_panels(layers);
  for (int l = 0; l < layers; ++l) {
    for (const auto& [n, k] : shapes) {
      auto w = torch::randn({n, k}) * 0.02;
      bf16[l].push_back(w.to(torch::kBFloat16));
      q8[l].push_back(lego::llm::quantize_rows(w, {WeightFormat::Int8, 32}));
      q4[l].push_back(lego::llm::quantize_rows(w, {WeightFormat::Int4, 32}));
      for (auto* panels : {&q8_panels, &q4_panels}) {
        const bool int8 = panels == &q8_panels;
        const QuantFormat format{int8 ? WeightFormat::Int8 : WeightFormat::Int4, 32};
        (*panels)[l].push_back(torch::empty({lego::llm::kernels::panels_bytes(format, n, k)}, torch::kUInt8));
        lego::llm::kernels::pack_panels((int8 ? q8 : q4)[l].back().data_ptr<uint8_t>(), format, n, k,
                                        (*panels)[l].back().data_ptr<uint8_t>());
      }
    }
  }
  if (!mapped_dir.empty()) {
    // The bf16 matrices one after another in a scratch file, then read back through a read-only mapping.
    std::string path = mapped_dir + "/cpu_kernels-XXXXXX";
    const int fd = ::mkstemp(path.data());
    if (fd < 0) {
      std::fprintf(stderr, "--mapped %s: cannot create a scratch file there\n", mapped_dir.c_str());
      return 2;
    }
    ::unlink(path.c_str());
    int64_t total = 0;
    for (const auto& layer : bf16) {
      for (const auto& t : layer) {
        const auto* p = static_cast<const char*>(t.data_ptr());
        for (int64_t done = 0, size = static_cast<int64_t>(t.nbytes()); done < size;) {
          const ssize_t w = ::write(fd, p + done, static_cast<size_t>(size - done));
          if (w <= 0) {
            std::fprintf(stderr, "--mapped %s: writing the scratch file failed (disk full?)\n", mapped_dir.c_str());
            return 2;
          }
          done += w;
        }
        total += static_cast<int64_t>(t.nbytes());
      }
    }
    void* map = ::mmap(nullptr, static_cast<size_t>(total), PROT_READ, MAP_SHARED, fd, 0);
    if (map == MAP_FAILED) {
      std::fprintf(stderr, "--mapped %s: mapping the scratch file failed\n", mapped_dir.c_str());
      return 2;
    }
#ifdef MADV_POPULATE_READ
    ::madvise(map, static_cast<size_t>(total), MADV_POPULATE_READ);
#endif
    int64_t offset = 0;
    for (int l = 0; l < layers; ++l) {
      for (size_t i = 0; i < shapes.size(); ++i) {
        const auto bytes = static_cast<int64_t>(bf16[l][i].nbytes());
        bf16[l][i] = torch::from_blob(static_cast<char*>(map) + offset, {shapes[i].first, shapes[i].second},
                                      torch::kBFloat16);
        offset += bytes;
      }
    }
  }
  std::vector<torch::Tensor> xs;
  // bf16 values held in float32, as a bf16 model's activations reach the kernels.
  for (const auto& s : shapes) xs.push_back(torch::randn({m_rows, s.second}).to(torch::kBFloat16).to(torch::kFloat32));
  double layer_bytes_bf16 = 0, layer_bytes_q8 = 0, layer_bytes_q4 = 0;
  for (size_t i = 0; i < shapes.size(); ++i) {
    layer_bytes_bf16 += static_cast<double>(bf16[0][i].numel() * 2);
    layer_bytes_q8 += static_cast<double>(q8[0][i].numel());
    layer_bytes_q4 += static_cast<double>(q4[0][i].numel());
  }
  std::vector<torch::Tensor> ys;
  for (const auto& s : shapes) ys.push_back(torch::empty({m_rows, s.first}));
  std::vector<torch::Tensor> sink(shapes.size());  // libtorch's outputs
  const auto isa = lego::llm::kernels::best_isa();

  struct Row {
    const char* name;
    double seconds;
    double bytes;
  };
  std::vector<Row> rows;
  const auto per_layer = [&](const char* name, double bytes, const std::function<void(int, size_t)>& f) {
    const double t = best_of(reps, [&] {
      for (int l = 0; l < layers; ++l) {
        for (size_t i = 0; i < shapes.size(); ++i) f(l, i);
      }
    });
    rows.push_back({name, t / layers, bytes});
  };
  // The roofline: the same bf16 bytes read and summed (64-bit lanes), shared among the threads.
  per_layer("read the bytes (sum)", layer_bytes_bf16, [&](int l, size_t i) {
    const auto* p = reinterpret_cast<const uint64_t*>(bf16[l][i].data_ptr());
    const int64_t n = bf16[l][i].numel() / 4;
    std::vector<uint64_t> part(static_cast<size_t>(threads), 0);
    at::parallel_for(0, n, n / threads + 1, [&](int64_t b, int64_t e) {
      uint64_t s = 0;
      for (int64_t j = b; j < e; ++j) s += p[j];
      part[static_cast<size_t>(at::get_thread_num())] += s;
    });
    if (part[0] == 42) std::puts("");  // keep the sum alive
  });
  per_layer("libtorch bf16 linear", layer_bytes_bf16, [&](int l, size_t i) {
    sink[i] = torch::nn::functional::linear(xs[i].to(torch::kBFloat16), bf16[l][i]);
  });
  if (m_rows > 1) {
    per_layer("lego::nn::linear bf16", layer_bytes_bf16, [&](int l, size_t i) {
      sink[i] = lego::nn::linear(xs[i].to(torch::kBFloat16), bf16[l][i], torch::Tensor());
    });
  }
  // The quantised kernels take at most kDecodeRows rows: a prompt goes through in chunks.
  const auto chunks = [&](size_t i, const std::function<void(const float*, int64_t, float*)>& f) {
    const int64_t k = shapes[i].second, n = shapes[i].first;
    for (int64_t r = 0; r < m_rows; r += lego::llm::kDecodeRows) {
      f(xs[i].data_ptr<float>() + r * k, std::min<int64_t>(lego::llm::kDecodeRows, m_rows - r), ys[i].data_ptr<float>() + r * n);
    }
  };
  // bf16 takes a prompt's rows in one call (a float32 panel of the weights serves them all).
  per_layer("lego bf16 kernel", layer_bytes_bf16, [&](int l, size_t i) {
    lego::llm::kernels::matmul_bf16(reinterpret_cast<const uint16_t*>(bf16[l][i].data_ptr()), shapes[i].first,
                                    shapes[i].second, xs[i].data_ptr<float>(), m_rows, ys[i].data_ptr<float>(), isa);
  });
  if (m_rows > lego::llm::kDecodeRows) {
    per_layer("lego bf16 kernel, 8-row calls", layer_bytes_bf16, [&](int l, size_t i) {
      chunks(i, [&](const float* x, int64_t m, float* y) {
        lego::llm::kernels::matmul_bf16(reinterpret_cast<const uint16_t*>(bf16[l][i].data_ptr()), shapes[i].first,
                                        shapes[i].second, x, m, y, isa);
      });
    });
  }
  per_layer("lego int8 kernel", layer_bytes_q8, [&](int l, size_t i) {
    chunks(i, [&](const float* x, int64_t m, float* y) {
      lego::llm::kernels::matmul_quant(q8[l][i].data_ptr<uint8_t>(), {WeightFormat::Int8, 32}, shapes[i].first,
                                       shapes[i].second, x, m, y, isa);
    });
  });
  per_layer("lego int4 kernel", layer_bytes_q4, [&](int l, size_t i) {
    chunks(i, [&](const float* x, int64_t m, float* y) {
      lego::llm::kernels::matmul_quant(q4[l][i].data_ptr<uint8_t>(), {WeightFormat::Int4, 32}, shapes[i].first,
                                       shapes[i].second, x, m, y, isa);
    });
  });
  for (const auto* panels : {&q8_panels, &q4_panels}) {
    const bool int8 = panels == &q8_panels;
    const QuantFormat format{int8 ? WeightFormat::Int8 : WeightFormat::Int4, 32};
    if (!lego::llm::kernels::panels_apply(format, hidden, hidden, isa)) continue;
    per_layer(int8 ? "lego int8 panels" : "lego int4 panels", int8 ? layer_bytes_q8 : layer_bytes_q4,
              [&](int l, size_t i) {
                chunks(i, [&](const float* x, int64_t m, float* y) {
                  lego::llm::kernels::matmul_panels((*panels)[l][i].data_ptr<uint8_t>(), format, shapes[i].first,
                                                    shapes[i].second, x, m, y, isa);
                });
              });
  }
  std::printf("one decoder layer's matrices (hidden %lld, intermediate %lld), %d layers cycled, %d threads, kernels: %s\n",
              static_cast<long long>(hidden), static_cast<long long>(inter), layers, threads,
              lego::llm::kernels::isa_name(isa));
  double layer_flops = 0;
  for (const auto& [n, k] : shapes) layer_flops += 2.0 * static_cast<double>(n * k * m_rows);
  std::printf("%lld rows of activations; bf16 weights in %s\n", static_cast<long long>(m_rows),
              mapped_dir.empty() ? "anonymous memory" : "a mapped file's pages (--mapped)");
  std::printf("%-24s %12s %12s %10s %10s\n", "", "ms/layer", "MiB/layer", "GB/s", "GFLOPS");
  for (const auto& r : rows) {
    std::printf("%-24s %12.2f %12.1f %10.1f %10.1f\n", r.name, r.seconds * 1e3, r.bytes / (1 << 20),
                r.bytes / r.seconds / 1e9, layer_flops / r.seconds / 1e9);
  }
  return 0;
}
