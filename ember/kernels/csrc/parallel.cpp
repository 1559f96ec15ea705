// The worker pool behind parallel.h (see there for why Ember does not use OpenMP's regions for
// its own kernels).
#include "parallel.h"

#include <ATen/Parallel.h>
#include <immintrin.h>
#include <x86intrin.h>

#include <atomic>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace ember {
namespace {

// How long an idle worker keeps polling for the next piece of work before it sleeps: decode
// steps issue a parallel call every few microseconds, so polling keeps their start cheap;
// sleeping soon after gives the core back when Ember is idle or the torch ops between our
// kernels need it.
constexpr uint64_t kSpinCycles = 400000;  // ~100 us at 4 GHz

struct Job {
  const std::function<void(int64_t, int64_t)>* body = nullptr;
  int64_t n = 0;
  int64_t unit = 1;  // items come in multiples of this (the last piece may be shorter)
  int64_t min_piece = 1;
  int64_t threads = 1;
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};  // items finished
};

thread_local bool in_pool_work = false;

// Takes and runs pieces of `job` until none is left, big ones first (a share of what is left,
// like OpenMP's guided schedule: few pieces when every thread runs, small ones at the end so a
// stalled thread holds up little). `body` is only called for items nobody has taken, so the
// caller of run() is still waiting and its function still exists.
void work_on(Job& job) {
  int64_t begin = job.next.load(std::memory_order_relaxed);
  for (;;) {
    if (begin >= job.n) return;
    const int64_t share = (job.n - begin) / (2 * job.threads);
    int64_t size = std::max(job.min_piece, (share + job.unit - 1) / job.unit * job.unit);
    size = std::min(size, job.n - begin);
    if (!job.next.compare_exchange_weak(begin, begin + size, std::memory_order_relaxed))
      continue;  // `begin` now holds the current value
    (*job.body)(begin, begin + size);
    job.done.fetch_add(size, std::memory_order_release);
    begin = job.next.load(std::memory_order_relaxed);
  }
}

class Pool {
 public:
  ~Pool() { resize(0); }

  void run(int64_t n, int64_t unit, int64_t min_piece,
           const std::function<void(int64_t, int64_t)>& body, int64_t threads) {
    std::lock_guard<std::mutex> one_caller(run_mutex_);  // jobs from two threads take turns
    if (static_cast<int64_t>(workers_.size()) != threads - 1) resize(threads - 1);
    auto job = std::make_shared<Job>();
    job->body = &body;
    job->n = n;
    job->unit = unit;
    job->min_piece = min_piece;
    job->threads = threads;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      current_ = job;
      seq_.fetch_add(1, std::memory_order_release);
    }
    if (sleepers_.load(std::memory_order_acquire) > 0) wake_.notify_all();
    in_pool_work = true;
    work_on(*job);
    in_pool_work = false;
    // Only pieces a worker has started remain.
    for (int spins = 0; job->done.load(std::memory_order_acquire) < n; ++spins) {
      if (spins < 4096)
        _mm_pause();
      else
        std::this_thread::yield();
    }
  }

 private:
  void resize(int64_t count) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
      seq_.fetch_add(1, std::memory_order_release);
    }
    wake_.notify_all();
    for (std::thread& worker : workers_) worker.join();
    workers_.clear();
    stop_ = false;
    for (int64_t i = 0; i < count; ++i) workers_.emplace_back([this] { loop(); });
  }

  void loop() {
    uint64_t seen = seq_.load(std::memory_order_acquire);
    for (;;) {
      uint64_t now = seq_.load(std::memory_order_acquire);
      const uint64_t start = __rdtsc();
      while (now == seen) {
        if (__rdtsc() - start < kSpinCycles) {
          _mm_pause();
        } else {
          std::unique_lock<std::mutex> lock(mutex_);
          sleepers_.fetch_add(1, std::memory_order_acq_rel);
          wake_.wait(lock, [&] { return seq_.load(std::memory_order_acquire) != seen; });
          sleepers_.fetch_sub(1, std::memory_order_acq_rel);
        }
        now = seq_.load(std::memory_order_acquire);
      }
      seen = now;
      std::shared_ptr<Job> job;
      {
        std::lock_guard<std::mutex> lock(mutex_);
        if (stop_) return;
        job = current_;
      }
      if (job) {
        in_pool_work = true;
        work_on(*job);
        in_pool_work = false;
      }
    }
  }

  std::mutex run_mutex_;
  std::mutex mutex_;  // guards current_ and stop_; seq_ changes under it
  std::condition_variable wake_;
  std::shared_ptr<Job> current_;
  std::atomic<uint64_t> seq_{0};
  std::atomic<int> sleepers_{0};
  bool stop_ = false;
  std::vector<std::thread> workers_;
};

Pool& pool() {
  // Never destroyed: worker threads must not be joined while the process exits.
  static Pool* instance = new Pool();
  return *instance;
}

}  // namespace

int64_t pool_threads() { return std::max<int64_t>(1, at::get_num_threads()); }

void run_shared(int64_t n, int64_t unit, int64_t min_piece,
                const std::function<void(int64_t, int64_t)>& body) {
  if (n <= 0) return;
  unit = std::max<int64_t>(1, unit);
  min_piece = std::max<int64_t>(unit, (min_piece + unit - 1) / unit * unit);
  const int64_t threads = pool_threads();
  if (threads <= 1 || n <= min_piece || in_pool_work || at::in_parallel_region()) {
    body(0, n);
    return;
  }
  pool().run(n, unit, min_piece, body, threads);
}

}  // namespace ember
