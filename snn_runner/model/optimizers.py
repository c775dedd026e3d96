"""Adam and AdamW whose per-variable update is TensorFlow's fused kernel.

Keras 3's Adam updates each variable with about ten separate element-wise
ops; on the sparse implementations' short steps that was a quarter of a
training step (8 ms of 33 on the benchmark network). ``ResourceApplyAdam``
does the same update, m and v included, in one pass over the variable.
Everything else stays Keras's: the learning-rate schedule, the decoupled
weight decay (applied before ``update_step``), the step counter and the m / v
slot variables, so checkpoints and resume are unchanged.

Keras 3 only (it overrides Keras 3's ``update_step``; tf.keras 2.6 has no
AdamW): import this module only where ``snn_runner.compat.fused_adam_supported()``.
"""

from __future__ import annotations

import keras
import tensorflow as tf


def _handle(variable):
    # a Keras variable wraps a tf.Variable; a tf.Variable is its own
    return variable.value.handle if hasattr(variable, "value") and hasattr(variable.value, "handle") \
        else variable.handle


class _FusedAdamStep:
    def update_step(self, gradient, variable, learning_rate):
        if self.amsgrad:
            return super().update_step(gradient, variable, learning_rate)
        dtype = variable.dtype
        step = tf.cast(self.iterations + 1, dtype)
        index = self._get_variable_index(variable)
        tf.raw_ops.ResourceApplyAdam(
            var=_handle(variable), m=_handle(self._momentums[index]), v=_handle(self._velocities[index]),
            beta1_power=tf.pow(tf.cast(self.beta_1, dtype), step),
            beta2_power=tf.pow(tf.cast(self.beta_2, dtype), step),
            lr=tf.cast(learning_rate, dtype), beta1=tf.cast(self.beta_1, dtype), beta2=tf.cast(self.beta_2, dtype),
            epsilon=tf.cast(self.epsilon, dtype), grad=tf.cast(gradient, dtype))


class FusedAdam(_FusedAdamStep, keras.optimizers.Adam):
    """keras.optimizers.Adam with the fused update."""


class FusedAdamW(_FusedAdamStep, keras.optimizers.AdamW):
    """keras.optimizers.AdamW with the fused update (weight decay as Keras applies it)."""
