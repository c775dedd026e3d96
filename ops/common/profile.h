// Phase timers of the fused op, for scripts/profile_step.py: where a call's
// time goes, per layer and per phase, summed over the threads that ran it.
// Phases count the running thread's CPU time, not wall time, because this
// machine is shared: a thread that is descheduled mid-phase would otherwise
// charge another tenant's time to it. kProfWall and kProfBwdReduce (which
// spans a parallel section run from the calling thread) are wall time.
//
// Off unless the environment variable SNN_OPS_PROFILE is set (to anything
// but "0") when the library first times something: the variable is read
// once, and a disabled timer costs one predictable branch per phase and
// tile, never per element. The counters are process-wide and read (and
// cleared) from Python through the plain C function snn_profile_take, loaded
// with ctypes from the same library file TensorFlow loaded.
#ifndef SNN_OPS_COMMON_PROFILE_H_
#define SNN_OPS_COMMON_PROFILE_H_

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <ctime>

namespace tensorflow {
namespace snn {

// Phases timed per layer. Keep in step with PHASES in scripts/profile_step.py.
enum ProfPhase {
  kProfFwdPack = 0,   // packing the weight tiles (forward)
  kProfFwdIntegrate,  // gather-adds, LIF update and selection masks
  kProfFwdSlots,      // writing ids, surrogates, counts
  kProfBwdBucket,     // bucketing the presynaptic events by neuron
  kProfBwdSetup,      // packing Wt, zeroing dWt (per tile)
  kProfBwdEps,        // eps recursion and gI rows
  kProfBwdEvents,     // dW scatter-adds and slot dot products
  kProfBwdStore,      // copying the dWt tile out
  kProfBwdReduce,     // summing the ds partials and narrow-layer dW copies (wall time)
  kProfWall,          // wall time of the whole pass (forward: layer 0 slot; backward: layer 1 slot)
  kProfPhases
};
constexpr int kProfMaxLayers = 8;
constexpr int kProfCounters = kProfMaxLayers * kProfPhases;

inline std::atomic<int64_t>* ProfCounters() {
  static std::atomic<int64_t> counters[kProfCounters];
  return counters;
}

inline bool Profiling() {
  static const bool on = [] {
    const char* v = std::getenv("SNN_OPS_PROFILE");
    return v != nullptr && *v != '\0' && std::strcmp(v, "0") != 0;
  }();
  return on;
}

inline int64_t ProfNowNs(clockid_t clock) {
  timespec ts;
  clock_gettime(clock, &ts);
  return int64_t{ts.tv_sec} * 1000000000 + ts.tv_nsec;
}

// Adds the lifetime of the object to counter (layer, phase) when profiling.
class ProfTimer {
 public:
  ProfTimer(int layer, ProfPhase phase)
      : index_(layer < kProfMaxLayers ? layer * kProfPhases + phase : -1),
        clock_(phase == kProfWall || phase == kProfBwdReduce ? CLOCK_MONOTONIC
                                                              : CLOCK_THREAD_CPUTIME_ID),
        start_(Profiling() && index_ >= 0 ? ProfNowNs(clock_) : 0) {}
  ~ProfTimer() {
    if (start_ != 0) {
      ProfCounters()[index_].fetch_add(ProfNowNs(clock_) - start_, std::memory_order_relaxed);
    }
  }
  ProfTimer(const ProfTimer&) = delete;
  ProfTimer& operator=(const ProfTimer&) = delete;

 private:
  int index_;
  clockid_t clock_;
  int64_t start_;
};

}  // namespace snn
}  // namespace tensorflow

#endif  // SNN_OPS_COMMON_PROFILE_H_
