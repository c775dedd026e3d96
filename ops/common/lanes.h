// Partial vectors for the ends of rows whose width is not a multiple of
// kLanes (common/simd.h): the lanes past the end are zero on load, never
// stored, and masked off in comparisons.
#ifndef SNN_OPS_COMMON_LANES_H_
#define SNN_OPS_COMMON_LANES_H_

#include <cstdint>
#include <cstring>

#include "common/simd.h"

namespace tensorflow {
namespace snn {

// Lanes [0, m) of p, the others zero (0 <= m <= kLanes).
inline Vf LoadSome(const float* p, int64_t m) {
  Vf v = Splat(0.f);
  std::memcpy(&v, p, m * sizeof(float));
  return v;
}
inline void StoreSome(float* p, const Vf& v, int64_t m) { std::memcpy(p, &v, m * sizeof(float)); }

// Bits [0, m) set: the real lanes of a comparison mask.
inline uint32_t LaneMask(int64_t m) {
  return m >= kLanes ? ~uint32_t{0} : (uint32_t{1} << m) - 1;
}

}  // namespace snn
}  // namespace tensorflow

#endif  // SNN_OPS_COMMON_LANES_H_
