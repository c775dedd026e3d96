"""The IPU backend: the Poplar ops of ops/poplar, planned per call, inside an IPUStrategy.

Every op call is planned (snn_runner.ipu.planner) for its static shapes at
trace time, and the plan's attribute string goes to both Build and
Build_grad. The Poplar graph builders need static shapes, so ``compile``
traces one XLA graph per input shape (for example the full batch, a short
last batch and the recorded samples), each with its own plan.

UNTESTED on hardware: checked only against a stand-in for
``tensorflow.python.ipu`` (tests/test_ipu_backend.py).
"""

from __future__ import annotations

import tensorflow as tf

from snn_runner.compat import xla_function_options
from snn_runner.ipu.backend import IpuRuntime
from snn_runner.ipu.planner import IpuTarget, plan_layer, plan_network
from snn_runner.neuron.lif import membrane_sequence
from snn_runner.sparse.fused import FusedLayout, check_inputs, fused_output
from snn_runner.sparse.spikes import SparseSpikes

IPU_MODE = "tf.function on IPUStrategy, XLA compiled (Poplar)"
NO_COUNT_GRADIENT = ("the activity and capacity penalties and membrane readouts with sparse_layer are not available "
                     "on the IPU: the Poplar op's gradient covers the loss on spike-count logits only")


def _static(shape: tf.TensorShape, what: str) -> list[int]:
    dims = shape.as_list() if shape.rank is not None else None
    if dims is None or any(d is None for d in dims):
        raise ValueError(f"the IPU ops need static shapes, but {what} has shape {shape}")
    return dims


class IpuBackend:
    name = "ipu"
    mode = IPU_MODE

    def __init__(self, runtime: IpuRuntime, num_ipus: int = 1):
        self.runtime = runtime
        self.target = IpuTarget(num_ipus=num_ipus)
        runtime.configure(num_ipus)
        self.strategy = runtime.strategy()

    def scope(self):
        return self.strategy.scope()

    def compile(self, fn, input_signature):
        strategy = self.strategy
        signature = list(input_signature)
        # As tensorflow-ipu's training loops do: the whole step is one XLA
        # function, run through the strategy, which places it on the IPU. No
        # input_signature: its unknown batch size would leave the ops
        # unplannable, so every new input shape is traced (and planned) anew.
        compiled = tf.function(fn, **xla_function_options())

        def call(*args):
            if len(args) != len(signature):
                raise TypeError(f"expected {len(signature)} arguments, got {len(args)}")
            tensors = []
            for i, (arg, spec) in enumerate(zip(args, signature)):
                t = tf.convert_to_tensor(arg, spec.dtype)
                if not spec.shape.is_compatible_with(t.shape):
                    raise ValueError(f"argument {i} has shape {t.shape}, expected {spec.shape}")
                tensors.append(t)
            return strategy.run(compiled, args=tuple(tensors))

        return call

    def sparse_binary_matmul(self, weights, spikes):
        ids, count, values = spikes
        n_in, n_out = _static(weights.shape, "weights")
        rows, k = _static(ids.shape, "spikes.ids")
        attributes = plan_layer("matmul", n_in, n_out, k, batch_size=rows, target=self.target).to_attributes()
        (y,) = self.runtime.user_op(
            "sparse_binary_matmul", [weights, ids, count, values], [tf.float32], [tf.TensorShape([rows, n_out])],
            attributes, inputs_with_gradients=[0, 3], name="SnnSparseBinaryMatmul",
        )
        return y

    def select_spikes(self, u, threshold, threshold2, capacity: int, beta: float):
        rows, n = _static(u.shape, "u")
        # beta reaches the op (and its gradient) through the plan's attributes
        attributes = plan_layer("select", 0, n, capacity, batch_size=rows, target=self.target).to_attributes(
            beta=beta)
        ids, count, dropped, values = self.runtime.user_op(
            "select_spikes", [u, threshold, threshold2], [tf.int32, tf.int32, tf.int32, tf.float32],
            [tf.TensorShape([rows, capacity]), tf.TensorShape([rows]), tf.TensorShape([rows]),
             tf.TensorShape([rows, capacity])],
            attributes, inputs_with_gradients=[0], name="SnnSelectSpikes",
        )
        return SparseSpikes(ids=ids, count=count, values=values), dropped

    def lif_sequence(self, current, alpha, threshold, threshold2, capacity: int, input_scale: float, beta: float):
        # No Poplar op runs the LIF sequence: the recursion stays plain TensorFlow (compiled by XLA
        # with the step) and the Poplar select op selects all T*B rows at once.
        steps, batch, n = _static(current.shape, "current")
        u = membrane_sequence(current, alpha, threshold, input_scale)
        selected, dropped = self.select_spikes(tf.reshape(u, [-1, n]), threshold, threshold2, capacity, beta)
        return (SparseSpikes(ids=tf.reshape(selected.ids, [steps, batch, capacity]),
                             count=tf.reshape(selected.count, [steps, batch]),
                             values=tf.reshape(selected.values, [steps, batch, capacity])),
                tf.reshape(dropped, [steps, batch]))

    def sparse_lif_layer(self, ids, count, weights, alpha, threshold, threshold2, capacities, input_scale, beta):
        inputs, caps = check_inputs(ids, count, weights, alpha, threshold, threshold2, capacities)
        layout = FusedLayout(len(caps))
        batch, steps, k_in = _static(inputs["in_ids"].shape, "in_ids")
        sizes = [_static(w.shape, f"weights[{i}]") for i, w in enumerate(inputs["weights"])]
        sizes = [sizes[0][0]] + [s[1] for s in sizes]
        plan = plan_network(sizes, caps, batch_size=batch, time_steps=steps, input_capacity=k_in,
                            target=self.target)
        out = self.runtime.user_op(
            "sparse_lif_layer", layout.inputs(**inputs), layout.output_types(),
            layout.output_shapes(batch, steps, sizes[-1], caps), plan.to_attributes(input_scale, beta),
            inputs_with_gradients=layout.weight_inputs, name="SnnSparseLifLayer",
        )
        # The Poplar gradient takes d loss / d logits only.
        return fused_output(*layout.split_outputs(out), unsupported=NO_COUNT_GRADIENT)
