// Work splitting for the quantized matmuls.
//
// Why not OpenMP (at::parallel_for): a decode step runs ~120 matmuls of 10-100 us each. An OpenMP
// region splits its work statically and ends at a barrier, so when the second core is busy with
// another process, every region waits a scheduler slice (milliseconds) for the descheduled
// thread. Here the work is split into chunks that threads claim one by one from a shared counter;
// the caller claims chunks too and returns as soon as every chunk has run, so a worker that wakes
// late finds nothing left and costs nothing.
//
// A job is published in one of two slots (by generation parity), and `next` packs the generation
// with the next chunk index: a worker claims a chunk with a compare-and-swap that fails if the job
// has changed, and only then reads the job's function, so a stale worker never runs a chunk of
// the wrong job. The caller only moves to the next generation once every chunk of this one is done.

#include "threadpool.h"

#include <pthread.h>
#include <sched.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <new>
#include <thread>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define HLM_PAUSE() _mm_pause()
#else
#define HLM_PAUSE() ((void)0)
#endif

namespace hlm {
namespace {

// a worker spins this long for the next job before sleeping: longer than the gap between two
// matmuls of a decode step (the Python and small ops in between), so it is awake when they come
constexpr auto SPIN_BEFORE_SLEEP = std::chrono::microseconds(300);

struct Job {
  void (*fn)(void*, int64_t) = nullptr;
  void* ctx = nullptr;
  int64_t n = 0;
  int helpers = 0;  // workers wanted for this job (threads - 1)
  std::atomic<int64_t> done{0};
};

class Pool {
 public:
  ~Pool() {
    stop_.store(true);
    gen_.fetch_add(1);
    gen_.notify_all();
    for (auto& t : workers_) t.join();
  }

  void run(int64_t n, int threads, void (*fn)(void*, int64_t), void* ctx) {
    const int helpers = threads - 1;
    while (static_cast<int>(workers_.size()) < helpers) {
      const int id = static_cast<int>(workers_.size());
      workers_.emplace_back([this, id] { work(id); });
    }
    const uint32_t g = gen_.load(std::memory_order_relaxed) + 1;
    Job& job = slots_[g & 1];
    job.fn = fn, job.ctx = ctx, job.n = n, job.helpers = helpers;
    job.done.store(0, std::memory_order_relaxed);
    next_.store(static_cast<uint64_t>(g) << 32, std::memory_order_release);
    gen_.store(g, std::memory_order_release);
    gen_.notify_all();
    claim(g);
    for (int spins = 0; job.done.load(std::memory_order_acquire) < n; ++spins) {
      if (spins < 4096) {
        HLM_PAUSE();
      } else {
        sched_yield();  // a worker holding a chunk was descheduled: let it have this core
      }
    }
  }

 private:
  // run chunks of generation g until none are left (or the job changed)
  void claim(uint32_t g) {
    Job& job = slots_[g & 1];
    for (;;) {
      uint64_t cur = next_.load(std::memory_order_acquire);
      if (static_cast<uint32_t>(cur >> 32) != g) return;
      const int64_t i = static_cast<int64_t>(cur & 0xffffffffu);
      if (i >= job.n) return;  // job.n is generation g's: the other slot is the one being written
      if (!next_.compare_exchange_weak(cur, cur + 1, std::memory_order_acq_rel)) continue;
      job.fn(job.ctx, i);
      job.done.fetch_add(1, std::memory_order_release);
    }
  }

  void work(int id) {
    uint32_t seen = 0;
    for (;;) {
      uint32_t g = gen_.load(std::memory_order_acquire);
      const auto until = std::chrono::steady_clock::now() + SPIN_BEFORE_SLEEP;
      for (int spins = 1; g == seen; ++spins) {
        HLM_PAUSE();
        g = gen_.load(std::memory_order_acquire);
        if (spins % 256 == 0 && std::chrono::steady_clock::now() > until) break;
      }
      if (g == seen) {
        gen_.wait(seen, std::memory_order_acquire);
        continue;
      }
      seen = g;
      if (stop_.load()) return;
      if (id < slots_[g & 1].helpers) claim(g);
    }
  }

  std::vector<std::thread> workers_;
  Job slots_[2];
  std::atomic<uint64_t> next_{0};
  std::atomic<uint32_t> gen_{0};
  std::atomic<bool> stop_{false};
};

Pool* g_pool = nullptr;
std::mutex g_busy;
std::once_flag g_atfork;

// a forked child has none of the parent's threads: start a new pool there (the old one is leaked)
void after_fork_in_child() {
  g_pool = nullptr;
  new (&g_busy) std::mutex();  // it may have been held by a thread that does not exist here
}

}  // namespace

void parallel_chunks(int64_t n, int threads, void (*fn)(void*, int64_t), void* ctx) {
  if (n <= 0) return;
  if (threads <= 1 || n == 1) {
    for (int64_t i = 0; i < n; ++i) fn(ctx, i);
    return;
  }
  std::call_once(g_atfork, [] { pthread_atfork(nullptr, nullptr, after_fork_in_child); });
  std::unique_lock<std::mutex> lock(g_busy, std::try_to_lock);
  if (!lock.owns_lock()) {  // another thread of the process is using the pool: run on this one
    for (int64_t i = 0; i < n; ++i) fn(ctx, i);
    return;
  }
  if (g_pool == nullptr) g_pool = new Pool();  // never destroyed: workers may outlive static teardown
  g_pool->run(n, threads, fn, ctx);
}

}  // namespace hlm
