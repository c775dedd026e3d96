"""The training recipe: optimizer, learning-rate schedule, theta2 annealing, early stopping.

Everything here is a pure function of the configuration and of counters the
checkpoint already keeps (the optimizer's ``iterations``, the epoch number,
the metric rows), so a resumed run follows the same recipe as an
uninterrupted one.

- ``train.schedule``: the learning rate of optimizer step ``s`` (0-based, the
  optimizer's ``iterations`` before the update) with ``W`` warm-up steps
  (``round(warmup_epochs * steps_per_epoch)``) and ``N = epochs *
  steps_per_epoch`` steps in all: ``lr * (s + 1) / W`` while ``s < W``; then
  ``lr`` (constant) or ``lr_min + (lr - lr_min) * (1 + cos(pi * p)) / 2`` with
  ``p = (s - W) / max(1, N - 1 - W)`` clipped to 1 (cosine: ``lr`` at the first
  step after the warm-up, ``lr_min`` at the last step).
- ``model.threshold2_*``: the carrier fraction of epoch ``e`` (1-based) is
  ``start + (end - start) * min(1, (e - 1) / threshold2_epochs)`` with ``end =
  threshold2_fraction``; an infinite end point makes every epoch before the
  end of the annealing use it (-inf start: every hidden neuron carries
  gradients until epoch ``threshold2_epochs``, then ``threshold2_fraction``).
"""

from __future__ import annotations

import math

from snn_runner.config import ModelConfig, TrainConfig

OPTIMIZERS = {"adam": "Adam", "adamw": "AdamW", "sgd": "SGD", "rmsprop": "RMSprop"}  # -> keras.optimizers class


def warmup_steps(cfg: TrainConfig, steps_per_epoch: int) -> int:
    return int(round(cfg.warmup_epochs * steps_per_epoch))


def learning_rate_at(cfg: TrainConfig, steps_per_epoch: int, step: int) -> float:
    """The learning rate of optimizer step ``step`` (0-based), in plain Python: the reference for the schedule."""
    warm, total = warmup_steps(cfg, steps_per_epoch), cfg.epochs * steps_per_epoch
    if step < warm:
        return cfg.learning_rate * (step + 1) / warm
    if cfg.schedule == "constant":
        return cfg.learning_rate
    p = min(1.0, (step - warm) / max(1, total - 1 - warm))
    return cfg.lr_min + (cfg.learning_rate - cfg.lr_min) * 0.5 * (1.0 + math.cos(math.pi * p))


def make_schedule(cfg: TrainConfig, steps_per_epoch: int):
    """``train.learning_rate`` as a float (constant, no warm-up: Keras's own variable) or a per-step schedule."""
    from snn_runner import compat

    if cfg.schedule == "constant" and warmup_steps(cfg, steps_per_epoch) == 0:
        return cfg.learning_rate

    class WarmupCosine(compat.keras().optimizers.schedules.LearningRateSchedule):
        """Linear warm-up, then constant or cosine decay; driven by the optimizer's ``iterations``."""

        def __init__(self, learning_rate, lr_min, warmup, total, cosine):
            self.learning_rate, self.lr_min = float(learning_rate), float(lr_min)
            self.warmup, self.total, self.cosine = int(warmup), int(total), bool(cosine)

        def __call__(self, step):
            import tensorflow as tf

            s = tf.cast(step, tf.float32)
            lr = tf.constant(self.learning_rate, tf.float32)
            after = lr
            if self.cosine:
                p = tf.minimum(1.0, (s - self.warmup) / float(max(1, self.total - 1 - self.warmup)))
                after = self.lr_min + (lr - self.lr_min) * 0.5 * (1.0 + tf.cos(math.pi * p))
            if self.warmup == 0:
                return after
            return tf.where(s < self.warmup, lr * (s + 1.0) / float(self.warmup), after)

        def get_config(self):
            return {"learning_rate": self.learning_rate, "lr_min": self.lr_min, "warmup": self.warmup,
                    "total": self.total, "cosine": self.cosine}

    return WarmupCosine(cfg.learning_rate, cfg.lr_min, warmup_steps(cfg, steps_per_epoch),
                        cfg.epochs * steps_per_epoch, cfg.schedule == "cosine")


def make_optimizer(cfg: TrainConfig, steps_per_epoch: int):
    """The Keras optimizer of ``train.optimizer`` with the schedule and the decoupled weight decay.

    Keras 3 applies ``weight_decay`` the same decoupled way in every optimizer
    (``w <- w - lr * weight_decay * w`` before the update), so it is honoured
    for adam, sgd and rmsprop too; adamw is Adam with it (and needs it > 0).
    """
    from snn_runner import compat

    cls = compat.optimizer_class(OPTIMIZERS[cfg.optimizer])
    if cfg.backend == "cpu" and cfg.optimizer in ("adam", "adamw") and compat.fused_adam_supported():
        from snn_runner.model.optimizers import FusedAdam, FusedAdamW

        # the same update in one kernel per variable (the IPU compiles Keras's own ops)
        cls = FusedAdam if cfg.optimizer == "adam" else FusedAdamW
    return compat.new_optimizer(cls, make_schedule(cfg, steps_per_epoch), cfg.weight_decay)


def threshold2_fraction_at(cfg: ModelConfig, epoch: int) -> float:
    """The carrier threshold (a fraction of theta) of hidden layers in ``epoch`` (1-based)."""
    end = cfg.threshold2_fraction
    start = end if cfg.threshold2_start == 1.0 else cfg.threshold2_start
    if cfg.threshold2_epochs == 0 or start == end:
        return end
    p = min(1.0, (epoch - 1) / cfg.threshold2_epochs)
    if p >= 1.0:
        return end
    if p == 0.0:
        return start
    if math.isinf(start) or math.isinf(end):
        return -math.inf
    return start + (end - start) * p


def annealing(cfg: ModelConfig) -> bool:
    """Whether theta2 changes during the run (then the parameters hold it in variables)."""
    return threshold2_fraction_at(cfg, 1) != cfg.threshold2_fraction


def patience_exhausted(rows: list[dict], best: dict, patience: int) -> bool:
    """``patience`` finished epochs after the best validation epoch: early stopping's rule."""
    return patience > 0 and bool(rows) and bool(best) and rows[-1]["epoch"] - best["epoch"] >= patience
