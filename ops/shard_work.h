// Shared by the per-step ops: when to hand work to TensorFlow's CPU pool.
#ifndef SNN_OPS_SHARD_WORK_H_
#define SNN_OPS_SHARD_WORK_H_

#include <cstdint>

#include "tensorflow/core/framework/op_kernel.h"
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

template <typename Fn>
void ShardWork(OpKernelContext* ctx, int64_t total, int64_t cycles_per_unit,
               const Fn& fn) {
  if (total <= 1 || total * cycles_per_unit < kMinParallelCycles) {
    fn(0, total);
    return;
  }
  const auto* threads = ctx->device()->tensorflow_cpu_worker_threads();
  Shard(threads->num_threads, threads->workers, total, cycles_per_unit, fn);
}

}  // namespace snn
}  // namespace tensorflow

#endif  // SNN_OPS_SHARD_WORK_H_
