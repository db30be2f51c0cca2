#include "lego/dist/group.h"

#include <torch/csrc/autograd/utils/lambda_post_hook.h>
#include <torch/csrc/autograd/variable.h>
#include <torch/torch.h>

#include <algorithm>
#include <cstdlib>
#include <deque>
#include <mutex>
#include <thread>
#include <unordered_set>

#ifdef LEGO_WITH_GLOO
// The pip wheel's libtorch_cpu carries c10d's Gloo backend; its header is compiled with gloo's headers
// (Debian's libgloo-dev: declarations only, nothing of libgloo is linked).
#ifndef USE_C10D_GLOO
#define USE_C10D_GLOO 1
#endif
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#endif
// GPU ranks talk over NCCL, which the CUDA wheel's libtorch_cuda carries; its header needs nccl.h (the
// wheel's nvidia/nccl/include, found by cmake/LegoTorch.cmake).
#if defined(LEGO_WITH_GLOO) && defined(LEGO_WITH_NCCL)
#ifndef USE_C10D_NCCL
#define USE_C10D_NCCL 1
#endif
#include <c10/cuda/CUDAFunctions.h>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include "lego/sdk/error.h"

namespace lego::dist {
namespace {

// The first line of a c10d or Gloo message, without the C++ backtrace c10::Error appends.
std::string first_line(const std::exception& e) {
  std::string what;
  if (const auto* c10 = dynamic_cast<const c10::Error*>(&e)) {
    what = c10->what_without_backtrace();
  } else {
    what = e.what();
  }
  return what.substr(0, what.find('\n'));
}

}  // namespace

bool has_nccl() {
#if defined(LEGO_WITH_GLOO) && defined(LEGO_WITH_NCCL)
  return true;
#else
  return false;
#endif
}

bool has_gloo() {
#ifdef LEGO_WITH_GLOO
  return true;
#else
  return false;
#endif
}

#ifdef LEGO_WITH_GLOO

struct Group::Impl {
  int rank = 0, size = 1;
  std::chrono::milliseconds timeout{0};
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::Backend> backend;
  // NCCL's collectives take tensors on `device` only: CPU tensors travel through a copy there and back.
  bool nccl = false;
  torch::Device device{torch::kCPU};

  torch::Tensor staged(const torch::Tensor& t) const { return nccl && !t.is_cuda() ? t.to(device) : t; }

  [[noreturn]] void fail(const std::string& what, const std::exception& e) const {
    throw Error(ErrorKind::Io, "rank " + std::to_string(rank) + " of " + std::to_string(size) + ": " + what +
                                   " failed (another rank exited, or did not answer within " +
                                   std::to_string(timeout.count() / 1000) + " s): " + first_line(e));
  }
};

struct Group::Pending::Impl {
  c10::intrusive_ptr<c10d::Work> work;
  const Group::Impl* group = nullptr;
  std::string what;
  torch::Tensor origin, sent;  // a CPU tensor staged on the GPU: the result is copied back after the wait

  // Starts `collective` on `tensor`, staged on the GPU first where the group needs it.
  template <typename Start>
  void start(const Group::Impl& g, torch::Tensor tensor, const std::string& w, Start collective) {
    group = &g;
    what = w;
    try {
      sent = g.staged(tensor);
      if (!sent.is_same(tensor)) origin = std::move(tensor);
      std::vector<at::Tensor> tensors{sent};
      work = collective(tensors);
    } catch (const std::exception& e) {
      g.fail(w, e);
    }
  }
};

Group::Group(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Group::~Group() = default;

std::unique_ptr<Group> Group::connect(const World& world, std::chrono::milliseconds timeout, torch::Device device) {
  if (device.is_cuda() && !has_nccl()) {
    throw Error(ErrorKind::Unsupported, "ranks on " + device.str() + " talk over NCCL, which this lego is not built "
                                        "with (configure with -DLEGO_WITH_CUDA=ON); CPU ranks use Gloo");
  }
  auto impl = std::make_unique<Impl>();
  impl->rank = world.rank;
  impl->size = world.size;
  impl->timeout = timeout;
  const std::string where = world.master_addr + ":" + std::to_string(world.master_port);
  try {
    c10d::TCPStoreOptions o;
    o.port = static_cast<uint16_t>(world.master_port);
    o.isServer = world.rank == 0 && !world.agent_store;
    o.numWorkers = world.agent_store ? std::nullopt : std::optional<size_t>(static_cast<size_t>(world.size));
    o.waitWorkers = !world.agent_store;
    o.timeout = timeout;
    auto tcp = c10::make_intrusive<c10d::TCPStore>(world.master_addr, o);
    // Our own key space: torchrun's agent keeps its keys in the same store.
    impl->store = c10::make_intrusive<c10d::PrefixStore>("lego", tcp);
  } catch (const std::exception& e) {
    throw Error(ErrorKind::Io, "rank " + std::to_string(world.rank) + " of " + std::to_string(world.size) +
                                   ": could not meet the other ranks at " + where + " within " +
                                   std::to_string(timeout.count() / 1000) + " s: " + first_line(e));
  }
#ifdef LEGO_WITH_NCCL
  if (device.is_cuda()) {
    try {
      // A collective that outlives the timeout then throws in wait() (naming this rank) instead of the
      // watchdog aborting the process.
      setenv("TORCH_NCCL_BLOCKING_WAIT", "1", /*overwrite=*/0);
      c10::cuda::set_device(device.index());
      auto options = c10d::ProcessGroupNCCL::Options::create();
      options->timeout = timeout;
      impl->backend = c10::make_intrusive<c10d::ProcessGroupNCCL>(impl->store, world.rank, world.size, options);
      impl->nccl = true;
      impl->device = device;
    } catch (const std::exception& e) {
      impl->fail("forming the NCCL group at " + where, e);
    }
    return std::unique_ptr<Group>(new Group(std::move(impl)));
  }
#endif
  try {
    auto options = c10d::ProcessGroupGloo::Options::create(timeout);
    // Ranks that meet on this machine talk over loopback; across machines, over the interface
    // GLOO_SOCKET_IFNAME names (as PyTorch does), else the one this host's name resolves to.
    const bool local = world.master_addr == "127.0.0.1" || world.master_addr == "localhost";
    const char* ifname = std::getenv("GLOO_SOCKET_IFNAME");
    options->devices.push_back(local ? c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1")
                               : ifname != nullptr && *ifname != 0
                                   ? c10d::ProcessGroupGloo::createDeviceForInterface(ifname)
                                   : c10d::ProcessGroupGloo::createDefaultDevice());
    options->threads = 1;
    impl->backend = c10::make_intrusive<c10d::ProcessGroupGloo>(impl->store, world.rank, world.size, options);
  } catch (const std::exception& e) {
    impl->fail("forming the Gloo group at " + where, e);
  }
  return std::unique_ptr<Group>(new Group(std::move(impl)));
}

int Group::rank() const { return impl_->rank; }
int Group::size() const { return impl_->size; }

void Group::all_reduce_sum(torch::Tensor& tensor, const std::string& what) { all_reduce_sum_async(tensor, what).wait(); }

Group::Pending Group::all_reduce_sum_async(torch::Tensor tensor, const std::string& what) {
  Pending p;
  p.impl_ = std::make_unique<Pending::Impl>();
  p.impl_->start(*impl_, std::move(tensor), what, [&](std::vector<at::Tensor>& t) { return impl_->backend->allreduce(t); });
  return p;
}

Group::Pending Group::reduce_sum_async(torch::Tensor tensor, int root, const std::string& what) {
  Pending p;
  p.impl_ = std::make_unique<Pending::Impl>();
  p.impl_->start(*impl_, std::move(tensor), what, [&](std::vector<at::Tensor>& t) {
    c10d::ReduceOptions o;
    o.rootRank = root;
    return impl_->backend->reduce(t, o);
  });
  return p;
}

void Group::broadcast(torch::Tensor& tensor, int root, const std::string& what) {
  try {
    auto sent = impl_->staged(tensor);
    std::vector<at::Tensor> tensors{sent};
    c10d::BroadcastOptions o;
    o.rootRank = root;
    impl_->backend->broadcast(tensors, o)->wait();
    if (!sent.is_same(tensor)) tensor.copy_(sent);
  } catch (const std::exception& e) {
    impl_->fail(what, e);
  }
}

void Group::barrier(const std::string& what) {
  try {
    impl_->backend->barrier()->wait();
  } catch (const std::exception& e) {
    impl_->fail(what, e);
  }
}

void Group::Pending::wait() {
  if (!impl_ || !impl_->work) return;
  try {
    if (!impl_->group->nccl) {
      // A Gloo sum is often done within a few milliseconds: polling for it, and yielding the core to the
      // threads that do the work, answers sooner than sleeping until Gloo wakes this thread (on a busy
      // 2-core VM, 1-3 % more tokens/s in bench/dist_scaling.py's 2-rank run). Past 20 ms the wait
      // sleeps, so that a rank waiting for a slow one does not keep a core busy.
      const auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(20);
      while (!impl_->work->isCompleted() && std::chrono::steady_clock::now() < until) std::this_thread::yield();
    }
    impl_->work->wait();
  } catch (const std::exception& e) {
    auto work = std::move(impl_->work);
    impl_->group->fail(impl_->what, e);
  }
  impl_->work.reset();
  if (impl_->origin.defined()) impl_->origin.copy_(impl_->sent);
  impl_->origin = impl_->sent = torch::Tensor();
}

#else  // no Gloo: a one-process lego

struct Group::Impl {};
struct Group::Pending::Impl {};
Group::Group(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Group::~Group() = default;
std::unique_ptr<Group> Group::connect(const World& world, std::chrono::milliseconds, torch::Device) {
  throw Error(ErrorKind::Unsupported, "this lego was built without Gloo (install libgloo-dev and rebuild): it cannot "
                                      "join a run of " + std::to_string(world.size) + " ranks");
}
int Group::rank() const { return 0; }
int Group::size() const { return 1; }
void Group::all_reduce_sum(torch::Tensor&, const std::string&) {}
Group::Pending Group::all_reduce_sum_async(torch::Tensor, const std::string&) { return {}; }
Group::Pending Group::reduce_sum_async(torch::Tensor, int, const std::string&) { return {}; }
void Group::broadcast(torch::Tensor&, int, const std::string&) {}
void Group::barrier(const std::string&) {}
void Group::Pending::wait() {}

#endif

Group::Pending::Pending() = default;
Group::Pending::~Pending() = default;
Group::Pending::Pending(Pending&&) noexcept = default;
Group::Pending& Group::Pending::operator=(Pending&&) noexcept = default;

// ---- data parallel gradients ----

struct GradientSync::Impl {
  struct Bucket {
    std::vector<size_t> members;  // indices into params
    int owner = -1;               // -1: summed on every rank; else only on that rank
    std::vector<size_t> sent;     // this pass: the members some rank has a gradient for
    torch::Tensor flat;
    Group::Pending pending;
  };
  static constexpr char kUnreached = 2;  // ready[i]: this pass's graph does not reach parameter i
  // What the autograd hooks touch, shared with them so that a hook outliving us does nothing.
  struct State {
    std::mutex mutex;
    bool armed = false;
    bool alive = true;
    std::vector<char> ready;           // per parameter, this pass: 1 done, kUnreached, 0 waiting
    std::vector<int64_t> remaining;    // per bucket: parameters not yet ready
    size_t next = 0;                   // the next bucket to start (buckets start in order on every rank)
    bool prepared = false;             // this pass's reach is being summed; buckets may start
  };

  Group& group;
  std::vector<torch::Tensor> params;
  std::vector<int> owners;
  std::vector<std::string> names;  // for errors; may be empty
  std::vector<size_t> bucket_of;
  std::vector<Bucket> buckets;
  std::shared_ptr<State> state = std::make_shared<State>();
  std::vector<std::pair<std::shared_ptr<torch::autograd::Node>, uintptr_t>> hooks;
  // Per parameter, how many ranks have a gradient for it in this pass (summed over the ranks before the
  // first bucket starts). A parameter no rank has one for is not sent and keeps no gradient, as in one
  // process, so that AdamW leaves it alone instead of decaying it.
  torch::Tensor reach;
  Group::Pending reach_sum;
  bool reach_known = false;
  std::deque<size_t> unowned_in_flight;  // this pass: buckets summed on another rank, oldest first
  int64_t held = 0, peak = 0;            // bytes of buckets held now, and at most, in this pass

  void hold(const torch::Tensor& flat, int sign) {
    held += sign * static_cast<int64_t>(flat.nbytes());
    peak = std::max(peak, held);
  }

  Impl(Group& g, std::vector<torch::Tensor> p) : group(g), params(std::move(p)) {}

  std::string name(size_t i) const { return names.empty() ? "parameter " + std::to_string(i) : names[i]; }

  // Called under state->mutex, once per sync pass, before any bucket starts: which parameters this rank's
  // pass reaches (`reached`: the graph's accumulators; none for a rank without a loss) or has a gradient
  // for already (earlier accumulation steps). The others are ready at once; their sum over the ranks starts.
  void prepare(const std::unordered_set<const torch::autograd::Node*>* reached) {
    auto& s = *state;
    reach = torch::zeros({static_cast<int64_t>(params.size())}, torch::kFloat32);
    auto* here = reach.data_ptr<float>();
    for (size_t i = 0; i < params.size(); ++i) {
      const bool in_graph = reached != nullptr && reached->count(hooks[i].first.get()) > 0;
      if (in_graph || params[i].grad().defined()) here[i] = 1.0F;
      if (!in_graph && !s.ready[i]) {
        s.ready[i] = kUnreached;
        --s.remaining[bucket_of[i]];
      }
    }
    reach_sum = group.all_reduce_sum_async(reach, "summing which parameters the ranks' batches reach");
    reach_known = false;
    s.prepared = true;
    start_ready();
  }

  void start(size_t b) {
    auto& bucket = buckets[b];
    if (!reach_known) {
      reach_sum.wait();
      reach_known = true;
    }
    const auto* ranks_with = reach.data_ptr<float>();
    bucket.sent.clear();
    int64_t numel = 0;
    for (size_t i : bucket.members) {
      if (ranks_with[i] <= 0) continue;
      bucket.sent.push_back(i);
      numel += params[i].numel();
    }
    if (bucket.sent.empty()) return;  // no rank has a gradient for any of them: nothing to sum
    // ZeRO 2: a bucket summed on another rank is let go once sent. At most kUnownedInFlight of them are in
    // flight (the oldest is waited for before another is made), so that a rank never holds more gradients
    // than its own share and that many buckets.
    const bool unowned = bucket.owner >= 0 && bucket.owner != group.rank();
    while (unowned && unowned_in_flight.size() >= GradientSync::kUnownedInFlight) {
      auto& sent = buckets[unowned_in_flight.front()];
      sent.pending.wait();
      hold(sent.flat, -1);
      sent.flat = torch::Tensor();
      unowned_in_flight.pop_front();
    }
    bucket.flat = torch::empty({numel}, params[bucket.members.front()].options().requires_grad(false));
    hold(bucket.flat, 1);
    int64_t at = 0;
    for (size_t i : bucket.sent) {
      const auto n = params[i].numel();
      auto part = bucket.flat.narrow(0, at, n);
      // The bucket holds the gradient from here on: the parameter's own is let go (end_backward makes it
      // a view of the sum), so that a rank never holds two copies of its gradients.
      if (auto& g = params[i].mutable_grad(); g.defined()) {
        part.copy_(g.detach().reshape({-1}));
        g = torch::Tensor();
      } else {
        part.zero_();
      }
      at += n;
    }
    const auto what = "summing gradient bucket " + std::to_string(b);
    bucket.pending = bucket.owner < 0 ? group.all_reduce_sum_async(bucket.flat, what)
                                      : group.reduce_sum_async(bucket.flat, bucket.owner, what);
    if (unowned) unowned_in_flight.push_back(b);
  }

  // Called under state->mutex: start every bucket whose turn has come and whose parameters are all ready.
  void start_ready() {
    if (!state->prepared) return;
    while (state->next < buckets.size() && state->remaining[state->next] == 0) start(state->next++);
  }

  void on_ready(size_t i) {
    std::lock_guard<std::mutex> lock(state->mutex);
    if (!state->armed) return;
    if (state->ready[i] == kUnreached) {
      throw Error(ErrorKind::InvalidArgument, "data parallel: " + name(i) +
                                                  " got a gradient although the autograd graph did not reach it "
                                                  "from the loss (a function that hides its parameters from autograd)");
    }
    if (state->ready[i]) {
      throw Error(ErrorKind::InvalidArgument, "data parallel: the gradient of " + name(i) + " was accumulated twice in "
                                              "one backward pass after its bucket was sent");
    }
    state->ready[i] = 1;
    --state->remaining[bucket_of[i]];
    start_ready();
  }
};

GradientSync::GradientSync(Group& group, std::vector<torch::Tensor> params, int64_t bucket_bytes, std::vector<int> owners,
                           std::vector<std::string> names)
    : impl_(std::make_unique<Impl>(group, std::move(params))) {
  auto& p = impl_->params;
  if (p.empty()) throw Error(ErrorKind::InvalidArgument, "data parallel: no trainable parameter");
  if (!owners.empty() && owners.size() != p.size()) {
    throw Error(ErrorKind::InvalidArgument, "data parallel: one owner per parameter expected");
  }
  impl_->owners = owners;
  if (!names.empty() && names.size() != p.size()) {
    throw Error(ErrorKind::InvalidArgument, "data parallel: one name per parameter expected");
  }
  impl_->names = std::move(names);
  auto owner_of = [&](size_t i) { return owners.empty() ? -1 : owners[i]; };
  if (bucket_bytes < 1) throw Error(ErrorKind::InvalidArgument, "data parallel: bucket size must be positive");
  impl_->bucket_of.resize(p.size());
  // Buckets in reverse parameter order, each up to bucket_bytes (a larger tensor gets one of its own) and
  // of one dtype; with owners, each owner's parameters are bucketed apart, owner by owner.
  std::vector<int> groups{-1};
  if (!owners.empty()) {
    groups.clear();
    for (int r = 0; r < group.size(); ++r) groups.push_back(r);
  }
  for (int g : groups) {
    Impl::Bucket current;
    int64_t bytes = 0;
    for (size_t k = p.size(); k-- > 0;) {
      if (owner_of(k) != g) continue;
      const auto size = p[k].numel() * static_cast<int64_t>(p[k].element_size());
      const bool other_dtype = !current.members.empty() && p[current.members.front()].scalar_type() != p[k].scalar_type();
      if (!current.members.empty() && (bytes + size > bucket_bytes || other_dtype)) {
        impl_->buckets.push_back(std::move(current));
        current = {};
        bytes = 0;
      }
      current.members.push_back(k);
      current.owner = g;
      bytes += size;
    }
    if (!current.members.empty()) impl_->buckets.push_back(std::move(current));
  }
  for (size_t b = 0; b < impl_->buckets.size(); ++b) {
    for (size_t i : impl_->buckets[b].members) impl_->bucket_of[i] = b;
  }
  impl_->state->ready.assign(p.size(), 0);
  impl_->state->remaining.assign(impl_->buckets.size(), 0);
  for (size_t i = 0; i < p.size(); ++i) {
    if (!p[i].requires_grad() || !p[i].is_leaf()) {
      throw Error(ErrorKind::InvalidArgument, "data parallel: " + impl_->name(i) + " is not a trainable leaf");
    }
    // The hook runs after the parameter's gradient is accumulated into .grad.
    auto acc = torch::autograd::impl::grad_accumulator(p[i]);
    std::weak_ptr<Impl::State> weak = impl_->state;
    Impl* self = impl_.get();
    const auto key = acc->add_post_hook(std::make_unique<torch::autograd::utils::LambdaPostHook>(
        [weak, self, i](const torch::autograd::variable_list& outputs, const torch::autograd::variable_list&) {
          if (auto s = weak.lock(); s && s->alive) self->on_ready(i);
          return outputs;
        }));
    impl_->hooks.emplace_back(acc, key);
  }
}

GradientSync::~GradientSync() {
  {
    std::lock_guard<std::mutex> lock(impl_->state->mutex);
    impl_->state->alive = false;
  }
  for (auto& [acc, key] : impl_->hooks) acc->del_post_hook(key);
}

int64_t GradientSync::buckets() const { return static_cast<int64_t>(impl_->buckets.size()); }

int64_t GradientSync::peak_bucket_bytes() const {
  std::lock_guard<std::mutex> lock(impl_->state->mutex);
  return impl_->peak;
}

void GradientSync::broadcast_parameters() {
  torch::NoGradGuard no_grad;
  for (size_t b = 0; b < impl_->buckets.size(); ++b) {
    auto& bucket = impl_->buckets[b];
    std::vector<torch::Tensor> parts;
    for (size_t i : bucket.members) parts.push_back(impl_->params[i].detach().reshape({-1}));
    auto flat = torch::cat(parts);
    impl_->group.broadcast(flat, 0, "receiving rank 0's parameters (bucket " + std::to_string(b) + ")");
    int64_t at = 0;
    for (size_t i : bucket.members) {
      auto& p = impl_->params[i];
      p.detach().copy_(flat.narrow(0, at, p.numel()).view_as(p));
      at += p.numel();
    }
  }
}

void GradientSync::broadcast_from_owners(const std::vector<int>& owners) {
  torch::NoGradGuard no_grad;
  auto& p = impl_->params;
  for (int r = 0; r < impl_->group.size(); ++r) {
    std::vector<size_t> mine;
    for (size_t i = 0; i < p.size(); ++i) {
      if (owners.at(i) == r) mine.push_back(i);
    }
    if (mine.empty()) continue;
    std::vector<torch::Tensor> parts;
    for (size_t i : mine) parts.push_back(p[i].detach().reshape({-1}));
    auto flat = torch::cat(parts);
    impl_->group.broadcast(flat, r, "receiving rank " + std::to_string(r) + "'s updated parameters");
    if (r == impl_->group.rank()) continue;
    int64_t at = 0;
    for (size_t i : mine) {
      p[i].detach().copy_(flat.narrow(0, at, p[i].numel()).view_as(p[i]));
      at += p[i].numel();
    }
  }
}

void GradientSync::begin_backward(bool sync) {
  auto& s = *impl_->state;
  std::lock_guard<std::mutex> lock(s.mutex);
  s.armed = sync;
  if (!sync) return;
  std::fill(s.ready.begin(), s.ready.end(), 0);
  s.prepared = false;
  impl_->unowned_in_flight.clear();
  impl_->held = impl_->peak = 0;
  for (size_t b = 0; b < impl_->buckets.size(); ++b) s.remaining[b] = static_cast<int64_t>(impl_->buckets[b].members.size());
  s.next = 0;
}

void GradientSync::prepare_backward(const torch::Tensor& loss) {
  auto& s = *impl_->state;
  {
    std::lock_guard<std::mutex> lock(s.mutex);
    if (!s.armed) return;  // an accumulation micro-step: nothing is sent
  }
  // The accumulators the backward pass from `loss` will reach.
  std::unordered_set<const torch::autograd::Node*> reached;
  std::vector<torch::autograd::Node*> frontier;
  if (const auto& root = loss.grad_fn()) {
    frontier.push_back(root.get());
  } else if (loss.requires_grad()) {
    frontier.push_back(torch::autograd::impl::grad_accumulator(loss).get());
  }
  for (auto* node : frontier) reached.insert(node);
  while (!frontier.empty()) {
    auto* node = frontier.back();
    frontier.pop_back();
    for (const auto& edge : node->next_edges()) {
      if (edge.function && reached.insert(edge.function.get()).second) frontier.push_back(edge.function.get());
    }
  }
  std::lock_guard<std::mutex> lock(s.mutex);
  if (s.prepared) {
    throw Error(ErrorKind::InvalidArgument, "data parallel: prepare_backward called twice in one backward pass");
  }
  impl_->prepare(&reached);
}

void GradientSync::end_backward() {
  auto& s = *impl_->state;
  {
    std::lock_guard<std::mutex> lock(s.mutex);
    if (!s.armed) return;
    // A rank without a loss in this pass says only which gradients it holds already.
    if (!s.prepared) impl_->prepare(nullptr);
    // What this rank's backward did not reach counts as zero; the buckets still start in order.
    for (size_t b = s.next; b < impl_->buckets.size(); ++b) s.remaining[b] = 0;
    impl_->start_ready();
    s.armed = false;
    s.prepared = false;
    impl_->unowned_in_flight.clear();
  }
  torch::NoGradGuard no_grad;
  for (auto& bucket : impl_->buckets) {
    bucket.pending.wait();
    if (bucket.owner >= 0 && bucket.owner != impl_->group.rank()) {
      bucket.flat = torch::Tensor();
      continue;
    }
    // Each sent parameter's gradient is its part of the sum, a view that keeps the bucket alive until the
    // gradients are let go; the members not sent (no rank has a gradient for them) keep none.
    int64_t at = 0;
    for (size_t i : bucket.sent) {
      auto& p = impl_->params[i];
      p.mutable_grad() = bucket.flat.narrow(0, at, p.numel()).view_as(p);
      at += p.numel();
    }
    bucket.flat = torch::Tensor();
  }
}

}  // namespace lego::dist
