// Input checks shared by the snn kernels. Every failure is an
// InvalidArgument status naming the input, the expected layout and the shape
// received, for OP_REQUIRES_OK in the kernels.
#ifndef SNN_OPS_COMMON_VALIDATE_H_
#define SNN_OPS_COMMON_VALIDATE_H_

#include <string>

#include "absl/strings/string_view.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/platform/errors.h"

namespace tensorflow {
namespace snn {

// "<name> must be a matrix [B, n], got shape [...]" unless t has `rank`
// dimensions; `dims` spells them ("[B, n]").
inline absl::Status CheckRank(const Tensor& t, int rank, absl::string_view name,
                              absl::string_view dims) {
  if (t.dims() == rank) return absl::OkStatus();
  const char* kind = rank == 1 ? "a vector " : rank == 2 ? "a matrix " : "";
  return errors::InvalidArgument(name, " must be ", kind, dims, ", got shape ",
                                 t.shape().DebugString());
}

// t must be a vector of length n; `length` says how n is spelled in the
// message and `source` where it comes from.
inline absl::Status CheckVectorLength(const Tensor& t, int64_t n, absl::string_view name,
                                      absl::string_view length, absl::string_view source) {
  if (t.dims() == 1 && t.dim_size(0) == n) return absl::OkStatus();
  return errors::InvalidArgument(name, " must be a vector of length ", length, " (", source,
                                 "), got shape ", t.shape().DebugString());
}

inline absl::Status CheckSameShape(const Tensor& a, absl::string_view a_name, const Tensor& b,
                                   absl::string_view b_name) {
  if (a.shape() == b.shape()) return absl::OkStatus();
  return errors::InvalidArgument(a_name, " shape ", a.shape().DebugString(), " must equal ",
                                 b_name, " shape ", b.shape().DebugString());
}

}  // namespace snn
}  // namespace tensorflow

#endif  // SNN_OPS_COMMON_VALIDATE_H_
