// The ranks of a distributed run talking to each other (DESIGN.md, core/dist), on c10d: PyTorch's own
// TCPStore rendezvous and Gloo process group. No communication code of our own: this wraps what c10d does
// in lego's errors, so that a rank that dies or hangs ends the others with one clear line instead of a hang.
//
// Data parallel training (GradientSync): every rank holds the whole model; the gradients of each backward
// pass that ends an optimizer step are summed over the ranks in buckets, each started from autograd hooks
// as soon as its parameters' gradients are complete, so communication overlaps the rest of the backward pass.
#pragma once

#include <torch/types.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "lego/dist/world.h"

namespace lego::dist {

class Group {
 public:
  // Meets the other ranks of `world` at MASTER_ADDR:MASTER_PORT (rank 0 serves the store, unless torchrun's
  // agent does) and forms a Gloo group for CPU tensors. Waiting for the others, and every collective after,
  // gives up after `timeout` with an Io error naming this rank and what it waited for. Throws Unsupported
  // when this lego was built without Gloo.
  // On a CUDA `device` (one per rank, in builds with LEGO_WITH_CUDA) the group is NCCL's instead, and CPU
  // tensors given to its collectives travel through a copy on `device`.
  static std::unique_ptr<Group> connect(const World& world, std::chrono::milliseconds timeout,
                                        torch::Device device = torch::kCPU);
  ~Group();
  Group(const Group&) = delete;
  Group& operator=(const Group&) = delete;

  int rank() const;
  int size() const;

  // Collectives; every rank must call the same ones in the same order. Contiguous tensors: CPU ones for
  // Gloo, any for NCCL.
  void all_reduce_sum(torch::Tensor& tensor, const std::string& what);
  void broadcast(torch::Tensor& tensor, int root, const std::string& what);
  void barrier(const std::string& what);

  // An all-reduce (sum) started now and waited for later, in place.
  class Pending {
   public:
    Pending();
    ~Pending();
    Pending(Pending&&) noexcept;
    Pending& operator=(Pending&&) noexcept;
    void wait();

   private:
    friend class Group;
    struct Impl;
    std::unique_ptr<Impl> impl_;
  };
  Pending all_reduce_sum_async(torch::Tensor tensor, const std::string& what);
  // The sum over the ranks into `root`'s tensor (the others' tensors are left undefined in content).
  Pending reduce_sum_async(torch::Tensor tensor, int root, const std::string& what);

 private:
  struct Impl;
  explicit Group(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Whether this lego was built with Gloo (the c10d backend for CPU tensors).
bool has_gloo();
// Whether this lego was built with NCCL (the c10d backend for CUDA tensors: LEGO_WITH_CUDA and Gloo's
// headers, which the distributed code needs either way).
bool has_nccl();

class GradientSync {
 public:
  // With owners (ZeRO stage 2): how many buckets of other ranks' gradients a rank keeps in flight at most.
  static constexpr size_t kUnownedInFlight = 2;
  // `params`: the trainable parameters, the same list in the same order on every rank. Buckets hold about
  // `bucket_bytes` of gradients each, filled in reverse order of `params` (the order backward reaches them).
  // With `owners` (one rank per parameter: ZeRO stage 2), a bucket holds one owner's parameters and its
  // sum goes to that owner only; every other rank drops those gradients once they are sent. `names` (one
  // per parameter, or none) name them in errors.
  GradientSync(Group& group, std::vector<torch::Tensor> params, int64_t bucket_bytes, std::vector<int> owners = {},
               std::vector<std::string> names = {});
  ~GradientSync();
  GradientSync(const GradientSync&) = delete;
  GradientSync& operator=(const GradientSync&) = delete;

  // Rank 0's parameter values to every rank (at the start, after a resume).
  void broadcast_parameters();
  // Before a backward pass: with `sync`, its buckets are summed over the ranks as they fill; without
  // (a gradient-accumulation micro-step), gradients only accumulate locally.
  void begin_backward(bool sync);
  // Between the forward pass and a sync backward pass from `loss`, on every rank with a loss: parameters
  // that the autograd graph of `loss` does not reach are done at once (their gradient is whatever this
  // rank holds already, else zero), so that their buckets need not wait for end_backward, and the ranks
  // start summing which parameters they reach: one that no rank reaches is not sent at all. A gradient
  // that reaches such a parameter anyway (through a function that hides its parameters from autograd)
  // fails the backward pass with an error.
  void prepare_backward(const torch::Tensor& loss);

  // After the sync pass (a rank without a loss calls only this): starts the buckets still waiting
  // (parameters this rank's batch did not reach count as zero), waits for all of them and makes each
  // parameter's .grad a view of its part of the sum (with owners: on the owner; the other ranks' .grad of
  // those parameters is undefined). A bucket holds its parameters' gradients from the moment it starts,
  // so a rank never holds two copies. A parameter that no rank has a gradient for keeps none, as in one
  // process.
  void end_backward();
  int64_t buckets() const;
  // The most bytes of gradient buckets this rank held at once in the last sync pass: its own gradients
  // and, with owners, at most two buckets of other ranks' in flight.
  int64_t peak_bucket_bytes() const;
  // Each owner's parameters, from that owner to every rank (after a sharded optimizer step).
  void broadcast_from_owners(const std::vector<int>& owners);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace lego::dist
