// The one way the snn kernels hand work to TensorFlow's CPU thread pool.
#ifndef SNN_OPS_COMMON_THREADING_H_
#define SNN_OPS_COMMON_THREADING_H_

#include <algorithm>
#include <cstdint>

#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/platform/threadpool.h"
#include "tensorflow/core/util/work_sharder.h"

namespace tensorflow {
namespace snn {

#ifndef SNN_MIN_PARALLEL_CYCLES
#define SNN_MIN_PARALLEL_CYCLES 450000
#endif
// Handing work to pool threads costs tens of microseconds when the host is
// virtualised or busy, which is more than a whole small call; work estimated
// below this many cycles therefore stays on the calling thread.
constexpr int64_t kMinParallelCycles = SNN_MIN_PARALLEL_CYCLES;

// The op's CPU worker pool, with the two ways the kernels split work:
// * Shard: rows of similar cost, split by TensorFlow's cost model (the
//   per-step ops, whose calls are often too small to be worth a thread);
// * ForEachUnit: a few coarse units (tiles, sample blocks) of the fused op,
//   one task each, told which worker runs them so each can use its own
//   scratch slot.
class CpuPool {
 public:
  explicit CpuPool(OpKernelContext* ctx)
      : threads_(ctx->device()->tensorflow_cpu_worker_threads()) {}

  int NumThreads() const { return std::max(1, threads_->workers->NumThreads()); }
  // Worker ids passed to ForEachUnit are below this (the pool's threads plus
  // the calling thread).
  int NumWorkers() const { return NumThreads() + 1; }

  // fn(begin, end) over [0, total); work below kMinParallelCycles in all
  // runs on the calling thread.
  template <typename Fn>
  void Shard(int64_t total, int64_t cycles_per_unit, const Fn& fn) const {
    if (total <= 1 || total * cycles_per_unit < kMinParallelCycles) {
      fn(0, total);
      return;
    }
    tensorflow::Shard(threads_->num_threads, threads_->workers, total, cycles_per_unit, fn);
  }

  // fn(unit, worker) for every unit in [0, n), one unit per task.
  template <typename Fn>
  void ForEachUnit(int64_t n, const Fn& fn) const {
    if (n <= 0) return;
    threads_->workers->ParallelForWithWorkerId(
        n, thread::ThreadPool::SchedulingParams::Fixed(1),
        [&](int64_t begin, int64_t end, int worker) {
          for (int64_t u = begin; u < end; ++u) fn(u, worker);
        });
  }

 private:
  const DeviceBase::CpuWorkerThreads* threads_;
};

}  // namespace snn
}  // namespace tensorflow

#endif  // SNN_OPS_COMMON_THREADING_H_
