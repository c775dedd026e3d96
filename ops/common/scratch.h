// Scratch memory of the fused op: one temporary tensor per call, carved
// into 64-byte-aligned arrays, with a shared part and one slot per worker.
#ifndef SNN_OPS_COMMON_SCRATCH_H_
#define SNN_OPS_COMMON_SCRATCH_H_

#include <cstdint>

#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"

namespace tensorflow {
namespace snn {

inline int64_t RoundUp(int64_t x, int64_t m) { return (x + m - 1) / m * m; }
inline int64_t CeilDiv(int64_t x, int64_t m) { return (x + m - 1) / m; }

// Carves 64-byte-aligned arrays out of one allocation. With a null base it
// only counts, which is how the sizes are found before allocating.
class Arena {
 public:
  explicit Arena(char* base) : base_(base), off_(0) {}
  template <typename T>
  T* Take(int64_t n) {
    off_ = RoundUp(off_, 64);
    T* p = reinterpret_cast<T*>(base_ + off_);
    off_ += n * static_cast<int64_t>(sizeof(T));
    return p;
  }
  int64_t Used() const { return RoundUp(off_, 64); }

 private:
  char* base_;
  int64_t off_;
};

// Bytes that carve(Arena&) takes.
template <typename Carve>
int64_t ArenaBytes(const Carve& carve) {
  Arena probe(nullptr);
  carve(probe);
  return probe.Used();
}

// A shared region of shared_bytes followed by `workers` slots of
// worker_bytes, all 64-byte aligned, in one temporary tensor (so TensorFlow's
// allocator, not the heap, serves the steady training loop).
class Scratch {
 public:
  absl::Status Allocate(OpKernelContext* ctx, int64_t shared_bytes, int64_t worker_bytes,
                        int workers) {
    TF_RETURN_IF_ERROR(ctx->allocate_temp(
        DT_INT8, TensorShape({shared_bytes + worker_bytes * workers + 64}), &tensor_));
    base_ = reinterpret_cast<char*>(tensor_.flat<int8_t>().data());
    base_ += (64 - reinterpret_cast<uintptr_t>(base_) % 64) % 64;
    shared_bytes_ = shared_bytes;
    worker_bytes_ = worker_bytes;
    return absl::OkStatus();
  }
  // A shared region only, laid out by carve(Arena&): run once to size it and
  // once more to hand out the pointers it assigns.
  template <typename Carve>
  absl::Status AllocateShared(OpKernelContext* ctx, const Carve& carve) {
    TF_RETURN_IF_ERROR(Allocate(ctx, ArenaBytes(carve), 0, 0));
    Arena arena(Shared());
    carve(arena);
    return absl::OkStatus();
  }
  char* Shared() const { return base_; }
  char* Worker(int worker) const { return base_ + shared_bytes_ + worker_bytes_ * worker; }

 private:
  Tensor tensor_;
  char* base_ = nullptr;
  int64_t shared_bytes_ = 0, worker_bytes_ = 0;
};

}  // namespace snn
}  // namespace tensorflow

#endif  // SNN_OPS_COMMON_SCRATCH_H_
