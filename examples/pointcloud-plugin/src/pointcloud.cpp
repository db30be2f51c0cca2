// The point-cloud modality `<points>`, built out of tree against an installed lego SDK the way a third party
// would build one. A cloud (PLY, XYZ or .npy, with or without colours) is normalised into the unit cube
// (its longest side becomes 1, the others keep their proportion, as a picture keeps its aspect in the
// padded square), reduced to `points` points by farthest point sampling, and encoded by a Point-BERT style
// transformer: `groups` centres by farthest point sampling, the `group_size` nearest points of each, a
// small PointNet per group, a position embedding of the centres, ViT blocks. A BLIP-2 Q-Former reads those
// features with `tokens` learned queries and a projector maps them to the LLM. Answers ground objects with
// 3-D boxes [x1, y1, z1, x2, y2, z2] relative to the normalised cube, mapped back to the file's coordinates.
//
// model.ini section (defaults after Point-BERT as PointLLM uses it: 8192 points, 512 groups of 32, width
// 384, 12 layers, 6 heads):
//   plugin = pointcloud, points, groups, group_size, width, layers, heads, mlp_dim,
//   tokens (32), qformer_hidden (768), qformer_layers (2), qformer_heads (12), qformer_intermediate (3072),
//   qformer_cross_freq (1), projector (linear)
#include <ATen/ATen.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <optional>
#include <random>

#include "lego/sdk/abi.h"
#include "lego/sdk/nn/eva_vit.h"
#include "lego/sdk/nn/linear.h"
#include "lego/sdk/nn/projector.h"
#include "lego/sdk/nn/qformer.h"
#include "point_files.h"
#include "point_scene.h"

namespace pointcloud {
namespace {

constexpr const char* kEncoderPrefix = "model.point_encoder.";
constexpr const char* kAdapterPrefix = "model.point_adapter.";
constexpr int64_t kChannels = 6;  // x y z r g b
// Colour of points from files without colours: mid grey.
constexpr float kNoColour = 0.5f;

struct CloudMeta : lego::MediaMeta {
  double lo[3] = {0, 0, 0}, hi[3] = {0, 0, 0};
  double side = 1;  // the longest side of the bounds: the normalised cube's side in file units
  int64_t points = 0;
};

// [B, N, 3] -> [B, m] indices of m points by farthest point sampling from the first point (deterministic).
at::Tensor farthest_points(const at::Tensor& xyz, int64_t m) {
  torch::NoGradGuard no_grad;
  const auto b = xyz.size(0);
  auto index = torch::zeros({b, m}, xyz.options().dtype(torch::kLong));
  auto nearest = torch::full({b, xyz.size(1)}, std::numeric_limits<float>::infinity(), xyz.options().dtype(torch::kFloat));
  auto farthest = torch::zeros({b}, index.options());
  const auto rows = torch::arange(b, index.options());
  const auto points = xyz.to(torch::kFloat);
  for (int64_t i = 0; i < m; ++i) {
    index.select(1, i).copy_(farthest);
    const auto centre = points.index({rows, farthest}).unsqueeze(1);  // [B, 1, 3]
    nearest = torch::minimum(nearest, (points - centre).square().sum(-1));
    farthest = nearest.argmax(-1);
  }
  return index;
}

// Gathers rows of `x` [B, N, C] at `index` [B, ...] -> [B, ..., C].
at::Tensor gather_rows(const at::Tensor& x, const at::Tensor& index) {
  const auto b = x.size(0);
  auto flat = index.reshape({b, -1});
  auto out = x.gather(1, flat.unsqueeze(-1).expand({b, flat.size(1), x.size(2)}));
  auto shape = index.sizes().vec();
  shape.push_back(x.size(2));
  return out.reshape(shape);
}

struct Options {
  int64_t points, groups, group_size, width, layers, heads, mlp_dim;
  int64_t tokens, qformer_hidden, qformer_layers, qformer_heads, qformer_intermediate, qformer_cross_freq;
  std::string projector;
};

Options read_options(const lego::ModalityConfig& c) {
  const auto& s = c.section;
  Options o{s.get_int("points", 8192, 16, 1 << 20),     s.get_int("groups", 512, 1, 1 << 16),
            s.get_int("group_size", 32, 1, 1024),       s.get_int("width", 384, 8, 8192),
            s.get_int("layers", 12, 0, 128),            s.get_int("heads", 6, 1, 128),
            s.get_int("mlp_dim", 1536, 1, 65536),       s.get_int("tokens", 32, 1, 4096),
            s.get_int("qformer_hidden", 768, 8, 8192),  s.get_int("qformer_layers", 2, 1, 64),
            s.get_int("qformer_heads", 12, 1, 128),     s.get_int("qformer_intermediate", 3072, 1, 65536),
            s.get_int("qformer_cross_freq", 1, 1, 64),  s.get_string("projector", "linear")};
  const auto where = s.file().string() + " [" + s.name() + "] ";
  if (o.groups > o.points) throw lego::Error(lego::ErrorKind::InvalidArgument, where + "groups must be at most points");
  if (o.group_size > o.points) throw lego::Error(lego::ErrorKind::InvalidArgument, where + "group_size must be at most points");
  if (o.width % o.heads != 0) throw lego::Error(lego::ErrorKind::InvalidArgument, where + "width must be a multiple of heads");
  return o;
}

// A small PointNet over each group: shared layers on every point, max over the group, the group's
// maximum beside each point, shared layers again, max again (Point-BERT's encoder, with LayerNorm for its
// BatchNorm so that a batch of one behaves like any other).
struct GroupEncoderImpl : torch::nn::Module {
  GroupEncoderImpl(int64_t width) {
    first1 = register_module("first1", lego::nn::Linear(lego::nn::LinearOptions(kChannels, 128)));
    first_norm = register_module("first_norm", lego::nn::make_layer_norm(128, 1e-5));
    first2 = register_module("first2", lego::nn::Linear(lego::nn::LinearOptions(128, 256)));
    second1 = register_module("second1", lego::nn::Linear(lego::nn::LinearOptions(512, 512)));
    second_norm = register_module("second_norm", lego::nn::make_layer_norm(512, 1e-5));
    second2 = register_module("second2", lego::nn::Linear(lego::nn::LinearOptions(512, width)));
  }
  // [B, G, K, 6] -> [B, G, width]
  at::Tensor forward(const at::Tensor& groups) {
    auto f = first2(torch::gelu(first_norm(first1(groups))));                     // [B, G, K, 256]
    auto g = std::get<0>(f.max(2, true)).expand_as(f);
    auto h = second2(torch::gelu(second_norm(second1(torch::cat({g, f}, -1)))));  // [B, G, K, width]
    return std::get<0>(h.max(2));
  }
  lego::nn::Linear first1{nullptr}, first2{nullptr}, second1{nullptr}, second2{nullptr};
  torch::nn::LayerNorm first_norm{nullptr}, second_norm{nullptr};
};
TORCH_MODULE(GroupEncoder);

struct PointEncoderImpl : torch::nn::Module {
  explicit PointEncoderImpl(const Options& o) : groups(o.groups), group_size(o.group_size) {
    group_encoder = register_module("group_encoder", GroupEncoder(o.width));
    pos1 = register_module("pos1", lego::nn::Linear(lego::nn::LinearOptions(3, 128)));
    pos2 = register_module("pos2", lego::nn::Linear(lego::nn::LinearOptions(128, o.width)));
    cls_token = register_parameter("cls_token", torch::empty({1, 1, o.width}));
    cls_pos = register_parameter("cls_pos", torch::empty({1, 1, o.width}));
    const auto block = lego::nn::EvaVisionOptions().width(o.width).heads(o.heads).mlp_dim(o.mlp_dim).layers(o.layers);
    blocks = register_module("blocks", torch::nn::ModuleList());
    for (int64_t i = 0; i < o.layers; ++i) blocks->push_back(lego::nn::EvaBlock(block));
    norm = register_module("norm", lego::nn::make_layer_norm(o.width, 1e-6));
  }
  // points [B, N, 6] (xyz in the unit cube, rgb in [0, 1]) -> [B, 1 + groups, width]
  at::Tensor forward(const at::Tensor& points) {
    const auto xyz = points.narrow(-1, 0, 3);
    at::Tensor centres, neighbours;
    {
      torch::NoGradGuard no_grad;
      const auto centre_index = farthest_points(xyz, groups);                       // [B, G]
      centres = gather_rows(xyz, centre_index);                                     // [B, G, 3]
      const auto d = torch::cdist(centres.to(torch::kFloat), xyz.to(torch::kFloat));  // [B, G, N]
      neighbours = std::get<1>(d.topk(group_size, -1, /*largest=*/false));          // [B, G, K]
    }
    auto group = gather_rows(points, neighbours);                                   // [B, G, K, 6]
    group = torch::cat({group.narrow(-1, 0, 3) - centres.unsqueeze(2), group.narrow(-1, 3, 3)}, -1);
    auto tokens = group_encoder(group);                                             // [B, G, width]
    auto pos = pos2(torch::gelu(pos1(centres)));
    const auto b = points.size(0);
    auto x = torch::cat({cls_token.expand({b, 1, -1}), tokens}, 1) + torch::cat({cls_pos.expand({b, 1, -1}), pos}, 1);
    for (const auto& blk : *blocks) x = blk->as<lego::nn::EvaBlock>()->forward(x);
    return norm(x);
  }
  int64_t groups, group_size;
  GroupEncoder group_encoder{nullptr};
  lego::nn::Linear pos1{nullptr}, pos2{nullptr};
  torch::Tensor cls_token, cls_pos;
  torch::nn::ModuleList blocks{nullptr};
  torch::nn::LayerNorm norm{nullptr};
};
TORCH_MODULE(PointEncoder);

struct PointAdapterImpl : torch::nn::Module {
  PointAdapterImpl(const Options& o, int64_t llm_hidden) {
    ln_points = register_module("ln_points", lego::nn::make_layer_norm(o.width, 1e-5));
    qformer = register_module("qformer", lego::nn::QFormer(lego::nn::QFormerOptions()
                                                               .hidden(o.qformer_hidden)
                                                               .heads(o.qformer_heads)
                                                               .intermediate(o.qformer_intermediate)
                                                               .layers(o.qformer_layers)
                                                               .encoder_width(o.width)
                                                               .cross_attention_freq(o.qformer_cross_freq)));
    query_tokens = register_parameter("query_tokens", torch::empty({1, o.tokens, o.qformer_hidden}));
    proj = register_module("proj", lego::nn::Projector(lego::nn::ProjectorOptions(o.qformer_hidden, llm_hidden).type(o.projector)));
  }
  at::Tensor forward(const at::Tensor& features) {
    auto q = query_tokens.expand({features.size(0), -1, -1});
    return proj(qformer(q, ln_points(features)));
  }
  torch::nn::LayerNorm ln_points{nullptr};
  lego::nn::QFormer qformer{nullptr};
  torch::Tensor query_tokens;
  lego::nn::Projector proj{nullptr};
};
TORCH_MODULE(PointAdapter);

class PointCloud : public lego::EncoderAdapterModality {
 public:
  explicit PointCloud(const lego::ModalityConfig& c)
      : options_(read_options(c)),
        encoder_(options_),
        adapter_(options_, c.llm_hidden_size > 0 ? c.llm_hidden_size : 1) {
    set_parts(encoder_.ptr(), kEncoderPrefix, adapter_.ptr(), kAdapterPrefix);
  }

  std::string placeholder() const override { return "<points>"; }
  std::vector<std::string> frame_tokens() const override { return {"<pt_start>", "<pt_patch>", "<pt_end>"}; }
  int64_t tokens() const override { return options_.tokens; }
  std::vector<std::string> file_types() const override { return cloud_extensions(); }

  lego::Media load(const std::filesystem::path& file, uint64_t seed) const override {
    const Cloud cloud = read_cloud(file);
    auto meta = std::make_shared<CloudMeta>();
    for (int a = 0; a < 3; ++a) {
      meta->lo[a] = meta->hi[a] = cloud.xyz[static_cast<size_t>(a)];
    }
    for (int64_t i = 0; i < cloud.size; ++i) {
      for (int a = 0; a < 3; ++a) {
        const double v = cloud.xyz[static_cast<size_t>(i * 3 + a)];
        meta->lo[a] = std::min(meta->lo[a], v);
        meta->hi[a] = std::max(meta->hi[a], v);
      }
    }
    meta->side = std::max({meta->hi[0] - meta->lo[0], meta->hi[1] - meta->lo[1], meta->hi[2] - meta->lo[2]});
    if (!(meta->side > 0)) meta->side = 1;  // one point, or all at one place
    meta->points = cloud.size;

    auto all = torch::empty({cloud.size, kChannels});
    auto* p = all.data_ptr<float>();
    for (int64_t i = 0; i < cloud.size; ++i) {
      for (int a = 0; a < 3; ++a) {
        p[i * kChannels + a] = static_cast<float>((cloud.xyz[static_cast<size_t>(i * 3 + a)] - meta->lo[a]) / meta->side);
        p[i * kChannels + 3 + a] = cloud.rgb.empty() ? kNoColour : cloud.rgb[static_cast<size_t>(i * 3 + a)];
      }
    }
    return {file, sample(all, seed), meta};
  }

  at::Tensor encode_features(const lego::MediaBatch& batch) override {
    const auto options = weight_options();
    auto input = batch.at("input").to(options.device(), options.dtype());
    std::optional<torch::NoGradGuard> frozen;  // the encoder records gradients only when it trains
    if (!encoder_trainable()) frozen.emplace();
    return encoder_(input);
  }
  at::Tensor encode(const lego::MediaBatch& batch) override { return adapter_(encode_features(batch)); }

  lego::GroundingKinds grounding() const override { return {6, false}; }
  lego::MappedBox map_box(const lego::Media& media, const std::vector<double>& box) const override {
    const auto* m = dynamic_cast<const CloudMeta*>(media.meta.get());
    if (m == nullptr || box.size() != 6) {
      throw lego::Error(lego::ErrorKind::InvalidArgument, "pointcloud: a box of 6 values on a loaded cloud is needed");
    }
    lego::MappedBox out{{}, {}, "xyz"};
    for (size_t i = 0; i < 6; ++i) {
      const auto a = i % 3;
      const double v = m->lo[a] + box[i] * m->side;
      const double extent = m->hi[a] - m->lo[a];
      out.absolute.push_back(v);
      out.relative.push_back(extent > 0 ? std::clamp((v - m->lo[a]) / extent, 0.0, 1.0) : 0.0);
    }
    return out;
  }

  std::optional<lego::synth::Rendered> synthesize(const lego::synth::Scene& scene,
                                                  const std::filesystem::path& stem) const override {
    return render_scene(scene, stem);
  }

 private:
  // `points` rows of `all` [N, 6]: farthest point sampling when there are more (from a seeded random
  // subset of at most 16 × points, which bounds its cost on large files), every row repeated in turn
  // when there are fewer.
  at::Tensor sample(const at::Tensor& all, uint64_t seed) const {
    const int64_t n = all.size(0), m = options_.points;
    if (n <= m) return all.index_select(0, torch::arange(m) % n);
    at::Tensor pool = all;
    if (n > 16 * m) {
      std::mt19937_64 rng(seed);
      std::vector<int64_t> pick(static_cast<size_t>(n));
      std::iota(pick.begin(), pick.end(), 0);
      std::shuffle(pick.begin(), pick.end(), rng);
      pick.resize(static_cast<size_t>(16 * m));
      std::sort(pick.begin(), pick.end());
      pool = all.index_select(0, torch::tensor(pick));
    }
    const auto index = farthest_points(pool.narrow(1, 0, 3).unsqueeze(0), m).squeeze(0);
    return pool.index_select(0, index);
  }

  Options options_;
  PointEncoder encoder_;
  PointAdapter adapter_;
};

}  // namespace
}  // namespace pointcloud

LEGO_PLUGIN(pointcloud::PointCloud, "pointcloud")
