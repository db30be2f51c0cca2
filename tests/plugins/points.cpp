// A test modality with what the released branches lack: media of different sizes and 3-D boxes.
// `<points>` reads a text file of "x y z" lines (a point cloud), batches clouds of different sizes by
// padding with a mask, pools the points it projects into `tokens` LLM tokens, and maps an answer's 3-D box
// [x1, y1, z1, x2, y2, z2] (relative to the cloud's bounds) back to the cloud's coordinates.
#include <ATen/ATen.h>
#include <torch/torch.h>

#include <cmath>
#include <fstream>
#include <sstream>

#include "lego/sdk/abi.h"
#include "lego/sdk/nn/linear.h"

namespace {

constexpr const char* kPrefix = "model.points_adapter.";
// Bounds on what a file may hold, checked before anything is allocated.
constexpr int64_t kMaxPoints = 1 << 20;
constexpr std::uintmax_t kMaxBytes = 64u << 20;

struct CloudMeta : lego::MediaMeta {
  double lo[3] = {0, 0, 0}, hi[3] = {0, 0, 0};
};

struct Adapter : torch::nn::Module {
  Adapter(int64_t tokens, int64_t hidden) {
    proj = register_module("proj", lego::nn::Linear(lego::nn::LinearOptions(3, hidden)));
    queries = register_parameter("queries", torch::empty({1, tokens, hidden}));
  }
  lego::nn::Linear proj{nullptr};
  torch::Tensor queries;
};

class Points : public lego::Modality {
 public:
  explicit Points(const lego::ModalityConfig& c)
      : adapter_(std::make_shared<Adapter>(c.section.get_int("tokens", 4),
                                           c.llm_hidden_size > 0 ? c.llm_hidden_size : 1)) {
    adapter_->eval();
  }

  std::string placeholder() const override { return "<points>"; }
  std::vector<std::string> frame_tokens() const override { return {"<pt_start>", "<pt_patch>", "<pt_end>"}; }
  int64_t tokens() const override { return adapter_->queries.size(1); }
  std::vector<std::string> file_types() const override { return {"xyz"}; }

  void load_weights(const lego::TensorSource& s, at::ScalarType dtype, c10::Device device) override {
    lego::load_module(*adapter_, s, kPrefix, dtype);
    adapter_->to(device);
  }
  std::vector<std::pair<std::string, at::Tensor>> encoder_parameters() override { return {}; }
  std::vector<std::pair<std::string, at::Tensor>> adapter_parameters() override {
    return lego::prefixed_parameters(*adapter_, kPrefix);
  }
  void train(bool on) override {
    Modality::train(on);
    adapter_->train(on);
  }

  lego::Media load(const std::filesystem::path& file, uint64_t) const override {
    std::error_code ec;
    const auto bytes = std::filesystem::file_size(file, ec);
    if (ec) throw lego::Error(lego::ErrorKind::NotFound, file.string() + ": cannot read");
    if (bytes > kMaxBytes) throw lego::Error(lego::ErrorKind::InvalidArgument, file.string() + ": too large");
    std::ifstream in(file);
    std::vector<float> xyz;
    auto meta = std::make_shared<CloudMeta>();
    for (std::string line; std::getline(in, line);) {
      std::istringstream s(line);
      double v[3];
      if (!(s >> v[0] >> v[1] >> v[2])) continue;
      for (int a = 0; a < 3; ++a) {
        if (!std::isfinite(v[a])) throw lego::Error(lego::ErrorKind::Format, file.string() + ": non-finite coordinate");
        const auto n = static_cast<int64_t>(xyz.size()) / 3;
        meta->lo[a] = n == 0 ? v[a] : std::min(meta->lo[a], v[a]);
        meta->hi[a] = n == 0 ? v[a] : std::max(meta->hi[a], v[a]);
      }
      for (double c : v) xyz.push_back(static_cast<float>(c));
      if (static_cast<int64_t>(xyz.size()) / 3 > kMaxPoints) {
        throw lego::Error(lego::ErrorKind::InvalidArgument, file.string() + ": more points than allowed");
      }
    }
    if (xyz.empty()) throw lego::Error(lego::ErrorKind::Format, file.string() + ": no points");
    auto t = torch::from_blob(xyz.data(), {static_cast<int64_t>(xyz.size()) / 3, 3}, torch::kFloat32).clone();
    return lego::Media{file, t, meta};
  }

  // Clouds of different sizes: padded to the largest, with a mask of the real points.
  lego::MediaBatch collate(const std::vector<lego::Media>& media) const override {
    int64_t most = 0;
    for (const auto& m : media) most = std::max(most, m.tensor.size(0));
    const auto b = static_cast<int64_t>(media.size());
    auto points = torch::zeros({b, most, 3});
    auto mask = torch::zeros({b, most}, torch::kBool);
    for (int64_t i = 0; i < b; ++i) {
      const auto n = media[static_cast<size_t>(i)].tensor.size(0);
      points[i].narrow(0, 0, n).copy_(media[static_cast<size_t>(i)].tensor);
      mask[i].narrow(0, 0, n).fill_(true);
    }
    return {b, {{"points", points}, {"mask", mask}}};
  }

  // Masked mean of the raw points: [B, 1, 3].
  at::Tensor encode_features(const lego::MediaBatch& batch) override {
    const auto w = adapter_->queries;
    auto points = batch.at("points").to(w.device(), w.scalar_type());
    auto mask = batch.at("mask").to(w.device()).unsqueeze(2).to(w.scalar_type());
    return ((points * mask).sum(1) / mask.sum(1)).unsqueeze(1);
  }

  at::Tensor encode(const lego::MediaBatch& batch) override {
    const auto w = adapter_->queries;
    auto points = batch.at("points").to(w.device(), w.scalar_type());
    auto mask = batch.at("mask").to(w.device()).unsqueeze(2).to(w.scalar_type());
    auto pooled = (torch::relu(adapter_->proj(points)) * mask).sum(1) / mask.sum(1);  // [B, hidden]
    return pooled.unsqueeze(1) + w;                                                    // [B, tokens, hidden]
  }

  lego::GroundingKinds grounding() const override { return {6, false}; }

  lego::MappedBox map_box(const lego::Media& media, const std::vector<double>& box) const override {
    const auto* m = dynamic_cast<const CloudMeta*>(media.meta.get());
    if (m == nullptr || box.size() != 6) throw lego::Error(lego::ErrorKind::InvalidArgument, "points: not a 3-D box of a cloud");
    lego::MappedBox out{box, {}, "m"};
    for (int i = 0; i < 6; ++i) out.absolute.push_back(m->lo[i % 3] + box[static_cast<size_t>(i)] * (m->hi[i % 3] - m->lo[i % 3]));
    return out;
  }

 private:
  std::shared_ptr<Adapter> adapter_;
};

}  // namespace

LEGO_PLUGIN(Points, "points")
