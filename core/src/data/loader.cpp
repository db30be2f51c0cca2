#include "lego/data/loader.h"

#include <algorithm>
#include <numeric>
#include <random>

#include "lego/sdk/error.h"

namespace lego::data {

std::vector<std::vector<size_t>> epoch_batches(const std::vector<int64_t>& lengths, int64_t batch_size, uint64_t seed,
                                               int64_t epoch, bool group_by_length, int64_t group) {
  if (batch_size < 1) throw Error(ErrorKind::InvalidArgument, "batch size must be at least 1");
  std::vector<size_t> order(lengths.size());
  std::iota(order.begin(), order.end(), 0);
  std::mt19937_64 rng(seed * 1000003ULL + static_cast<uint64_t>(epoch));
  std::shuffle(order.begin(), order.end(), rng);
  const auto b = static_cast<size_t>(batch_size);
  if (group_by_length) {
    const size_t chunk = b * static_cast<size_t>(std::max<int64_t>(group, 1));
    for (size_t at = 0; at < order.size(); at += chunk) {
      auto end = order.begin() + static_cast<std::ptrdiff_t>(std::min(order.size(), at + chunk));
      std::stable_sort(order.begin() + static_cast<std::ptrdiff_t>(at), end,
                       [&](size_t x, size_t y) { return lengths[x] > lengths[y]; });
    }
  }
  std::vector<std::vector<size_t>> batches;
  for (size_t at = 0; at < order.size(); at += b) {
    batches.emplace_back(order.begin() + static_cast<std::ptrdiff_t>(at),
                         order.begin() + static_cast<std::ptrdiff_t>(std::min(order.size(), at + b)));
  }
  if (group_by_length) std::shuffle(batches.begin(), batches.end(), rng);
  return batches;
}

struct MediaPrefetcher::Batch {
  std::vector<MediumJob> jobs;
  LoadedMedia loaded;
  size_t remaining = 0;
};

MediaPrefetcher::MediaPrefetcher(const Pipeline& pipeline, std::function<std::vector<MediumJob>(size_t)> jobs,
                                 size_t batches, size_t first, int workers, int depth)
    : pipeline_(pipeline),
      jobs_(std::move(jobs)),
      batches_(batches),
      depth_(static_cast<size_t>(std::max(depth, 1))),
      scheduled_(first) {
  const int n = std::clamp(workers, 1, 64);
  for (int i = 0; i < n; ++i) threads_.emplace_back([this] { work(); });
}

MediaPrefetcher::~MediaPrefetcher() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
    queue_.clear();
  }
  work_ready_.notify_all();
  for (auto& t : threads_) t.join();
}

void MediaPrefetcher::schedule_until(size_t k) {
  // Called with the lock held.
  while (scheduled_ < batches_ && scheduled_ <= k) {
    auto batch = std::make_shared<Batch>();
    batch->jobs = jobs_(scheduled_);
    batch->loaded.media.resize(batch->jobs.size());
    batch->loaded.errors.resize(batch->jobs.size());
    batch->remaining = batch->jobs.size();
    for (size_t m = 0; m < batch->jobs.size(); ++m) queue_.emplace_back(scheduled_, m);
    pending_[scheduled_] = std::move(batch);
    ++scheduled_;
  }
  work_ready_.notify_all();
}

void MediaPrefetcher::work() {
  for (;;) {
    std::pair<size_t, size_t> job;
    std::shared_ptr<Batch> batch;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      work_ready_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
      if (stopping_) return;
      job = queue_.front();
      queue_.pop_front();
      batch = pending_.at(job.first);
    }
    const auto& j = batch->jobs[job.second];
    EncodedMedia loaded;
    std::exception_ptr error;
    try {
      loaded = pipeline_.load_medium(j.input, j.seed);
    } catch (...) {
      error = std::current_exception();
    }
    {
      std::lock_guard<std::mutex> lock(mutex_);
      batch->loaded.media[job.second] = std::move(loaded);
      batch->loaded.errors[job.second] = error;
      --batch->remaining;
    }
    batch_done_.notify_all();
  }
}

LoadedMedia MediaPrefetcher::take(size_t k) {
  if (k >= batches_) throw Error(ErrorKind::InvalidArgument, "prefetch: no batch " + std::to_string(k));
  std::unique_lock<std::mutex> lock(mutex_);
  schedule_until(k + depth_);
  auto it = pending_.find(k);
  if (it == pending_.end()) throw Error(ErrorKind::InvalidArgument, "prefetch: batch " + std::to_string(k) + " was taken");
  auto batch = it->second;
  batch_done_.wait(lock, [&] { return batch->remaining == 0; });
  pending_.erase(it);
  return std::move(batch->loaded);
}

}  // namespace lego::data
