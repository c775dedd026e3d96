// Registration of SnnGatherAddCalibration, the bench's measure of what this
// machine can do: the gather-add of weight rows that dominates the sparse
// kernels, on L2-resident rows, on every thread of the pool. The kernel is in
// gather_add_calibration_kernels.cc.

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace tensorflow {

REGISTER_OP("SnnGatherAddCalibration")
    .Input("table: float")
    .Input("ids: int32")
    .Attr("group: int >= 1")
    .Attr("repeats: int >= 1")
    .Output("sums: float")
    .SetShapeFn([](shape_inference::InferenceContext* c) {
      shape_inference::ShapeHandle table, ids;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 2, &table));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 1, &ids));
      c->set_output(0, c->Matrix(c->UnknownDim(), c->Dim(table, 1)));
      return absl::OkStatus();
    })
    .Doc(R"doc(
Every pool thread (and the calling one) sums groups of `group` rows of
`table` [R, W], picked by `ids` [N] in order, `repeats` times over ids.
sums: [workers, W], each worker's last group sum (kept so the work is not
optimised away). Float adds done: workers * repeats * (N / group * group) * W.
)doc");

}  // namespace tensorflow
