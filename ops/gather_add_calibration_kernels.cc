// CPU kernel of SnnGatherAddCalibration (see gather_add_calibration_ops.cc):
// the inner loop of the fused forward pass (rows summed into independent
// vector accumulators, four chunks at a time) without its bookkeeping, so the
// bench can set the kernels' achieved rate against what these cores sustain.

#include <algorithm>
#include <cstdint>
#include <vector>

#include "common/simd.h"
#include "common/threading.h"
#include "tensorflow/core/framework/op_kernel.h"

namespace tensorflow {
namespace snn {
namespace {

class GatherAddCalibrationOp : public OpKernel {
 public:
  explicit GatherAddCalibrationOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("group", &group_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("repeats", &repeats_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& table = ctx->input(0);
    const Tensor& ids = ctx->input(1);
    const int64_t rows = table.dim_size(0), width = table.dim_size(1), n = ids.dim_size(0);
    OP_REQUIRES(ctx, width % kLanes == 0 && width > 0,
                errors::InvalidArgument("table width must be a positive multiple of ", kLanes, ", got ", width));
    const int32_t* id = ids.flat<int32_t>().data();
    for (int64_t i = 0; i < n; ++i) {
      OP_REQUIRES(ctx, id[i] >= 0 && id[i] < rows,
                  errors::InvalidArgument("ids[", i, "] = ", id[i], " is outside the table's ", rows, " rows"));
    }
    const CpuPool pool(ctx);
    const int workers = pool.NumThreads();
    Tensor* sums = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({workers, width}), &sums));
    const float* t = table.flat<float>().data();
    float* out = sums->flat<float>().data();
    const int64_t groups = n / group_;
    pool.ForEachUnit(workers, [&](int64_t w, int) {
      std::vector<float> acc(width);
      for (int64_t r = 0; r < repeats_; ++r) {
        for (int64_t g = 0; g < groups; ++g) {
          const int32_t* gid = id + g * group_;
          for (int64_t o = 0; o < width; o += 4 * kLanes) {
            const int nc = static_cast<int>(std::min<int64_t>(4, (width - o) / kLanes));
            Vf a[4] = {Splat(0.f), Splat(0.f), Splat(0.f), Splat(0.f)};
            for (int64_t e = 0; e < group_; ++e) {
              const float* row = t + gid[e] * width + o;
              for (int h = 0; h < nc; ++h) a[h] += Load(row + h * kLanes);
            }
            for (int h = 0; h < nc; ++h) Store(acc.data() + o + h * kLanes, a[h]);
          }
        }
      }
      std::copy(acc.begin(), acc.end(), out + w * width);
    });
  }

 private:
  int64_t group_ = 1, repeats_ = 1;
};

REGISTER_KERNEL_BUILDER(Name("SnnGatherAddCalibration").Device(DEVICE_CPU), GatherAddCalibrationOp);

}  // namespace
}  // namespace snn
}  // namespace tensorflow
