// Batches for training (DESIGN.md, core/data): the order of an epoch's examples for a seed, grouped by
// length so that a batch pads little, and the media of the coming batches loaded ahead of the step by a
// bounded pool of threads (Modality::load is thread-safe and CPU-only).
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "lego/pipeline/pipeline.h"

namespace lego::data {

// The batches of one epoch, as indices into `lengths`: a permutation drawn from (seed, epoch); with
// `group_by_length`, cut into groups of `group` batches whose examples are sorted longest first, then
// batched, and the batches shuffled (the release's length grouping, so a batch's lengths are alike). The
// last batch may be smaller.
std::vector<std::vector<size_t>> epoch_batches(const std::vector<int64_t>& lengths, int64_t batch_size, uint64_t seed,
                                               int64_t epoch, bool group_by_length, int64_t group = 50);

// One medium to load: what, and the seed of its randomness (a training crop).
struct MediumJob {
  MediaInput input;
  uint64_t seed = 0;
};

// The loaded media of one batch, in the jobs' order; a medium that failed holds its error instead.
struct LoadedMedia {
  std::vector<EncodedMedia> media;       // features still empty
  std::vector<std::exception_ptr> errors;  // per medium, null when it loaded
};

// Loads batches' media on `workers` threads, at most `depth` batches ahead of the one being taken.
class MediaPrefetcher {
 public:
  // `jobs(k)` gives the media of batch k (called on the caller's thread, in order); `batches` is how many
  // there are and `first` the first one that will be taken (a resumed run starts in the middle).
  MediaPrefetcher(const Pipeline& pipeline, std::function<std::vector<MediumJob>(size_t)> jobs, size_t batches,
                  size_t first, int workers, int depth);
  ~MediaPrefetcher();
  MediaPrefetcher(const MediaPrefetcher&) = delete;
  MediaPrefetcher& operator=(const MediaPrefetcher&) = delete;
  // The media of batch k (k counts up from `first`, one by one); waits for them.
  LoadedMedia take(size_t k);

 private:
  struct Batch;
  void schedule_until(size_t k);
  void work();

  const Pipeline& pipeline_;
  std::function<std::vector<MediumJob>(size_t)> jobs_;
  size_t batches_;
  size_t depth_;
  size_t scheduled_ = 0;  // batches handed to the pool so far
  std::mutex mutex_;
  std::condition_variable work_ready_, batch_done_;
  std::deque<std::pair<size_t, size_t>> queue_;  // (batch, medium)
  std::map<size_t, std::shared_ptr<Batch>> pending_;
  bool stopping_ = false;
  std::vector<std::thread> threads_;
};

}  // namespace lego::data
