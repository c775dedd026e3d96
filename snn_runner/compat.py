"""The differences between the two stacks snn-runner runs on, in one place.

CPU (and GPU) image: Python 3.11, TensorFlow 2.21, Keras 3. IPU image:
Graphcore's tensorflow-ipu on TensorFlow 2.6, Python 3.8, tf.keras 2.6
(docs/ipu.md). Everything the package uses that the older stack lacks, or
spells differently, goes through a function here, chosen by what the
installed library offers rather than by version numbers where possible.
The syntax floor (Python 3.8) is checked by scripts/check-syntax-floor.

Imports of TensorFlow are inside the functions, so that importing this
module stays cheap for the commands that never train.
"""

from __future__ import annotations

import inspect
import os


class CompatError(RuntimeError):
    """A feature the run asks for that the installed TensorFlow/Keras does not have."""


def keras():
    """The Keras that TensorFlow trains with: Keras 3 on the CPU stack, tf.keras 2.6 on the IPU one.

    ``tf.keras`` rather than ``import keras``: on TensorFlow 2.21 both are
    the same classes, and on 2.6 ``tf.keras`` is what tensorflow-ipu's
    strategy is built and tested with.
    """
    import tensorflow as tf

    return tf.keras


def fused_adam_supported() -> bool:
    """Whether snn_runner.model.optimizers' fused Adam works here.

    It overrides Keras 3's ``update_step(gradient, variable, learning_rate)``
    and reads its slot lists; tf.keras 2.6's Adam has neither (its update is
    ``_resource_apply_dense``), so there Keras's own Adam is used.
    """
    adam = keras().optimizers.Adam
    step = getattr(adam, "update_step", None)
    return step is not None and "learning_rate" in inspect.signature(step).parameters \
        and hasattr(adam, "_get_variable_index")


def optimizer_class(name: str):
    """``keras.optimizers.<name>``; AdamW is not in tf.keras 2.6, so say so instead of an AttributeError."""
    cls = getattr(keras().optimizers, name, None)
    if cls is None:
        raise CompatError(f"keras.optimizers.{name} does not exist in Keras {keras().__version__} "
                          "(the IPU image's tf.keras); use another train.optimizer")
    return cls


def new_optimizer(cls, learning_rate, weight_decay: float = 0.0):
    """``cls(learning_rate)``, with decoupled weight decay when asked for.

    Keras 3 (and Keras >= 2.11) take ``weight_decay`` in every optimizer;
    tf.keras 2.6's optimizers have no such argument, and silently training
    without the decay would record a run that did not happen.
    """
    if weight_decay > 0:
        if "weight_decay" not in inspect.signature(cls).parameters:
            raise CompatError(f"{cls.__name__} of Keras {keras().__version__} has no weight_decay "
                              "(the IPU image's tf.keras); set train.weight_decay: 0")
        return cls(learning_rate, weight_decay=weight_decay)
    return cls(learning_rate)


def build_optimizer(optimizer, variables) -> None:
    """Create the optimizer's step counter and slots for ``variables`` now (before a checkpoint is restored).

    Keras 3 has ``build(var_list)``; tf.keras 2.6's OptimizerV2 creates them
    in ``_create_all_weights``, which ``apply_gradients`` would call later.
    """
    build = getattr(optimizer, "build", None)
    if build is not None:
        build(variables)
    else:
        optimizer._create_all_weights(variables)


def optimizer_variables(optimizer) -> list:
    """The optimizer's state variables: a list attribute in Keras 3, a method in tf.keras 2.6."""
    found = optimizer.variables
    return list(found() if callable(found) else found)


def xla_function_options() -> dict:
    """``tf.function`` options for an XLA-compiled function.

    TensorFlow renamed the option: ``experimental_compile`` before 2.5
    (some tensorflow-ipu releases), ``jit_compile`` since.
    """
    import tensorflow as tf

    params = inspect.signature(tf.function).parameters
    return {"jit_compile": True} if "jit_compile" in params else {"experimental_compile": True}


def h5_unlocked() -> dict:
    """``h5py.File`` keywords that open a file without HDF5's file lock.

    h5py 3.5 and newer take ``locking=False`` per file. h5py 3.1 (TensorFlow
    2.6's, so the IPU image's) has no such argument; there the HDF5 library
    reads ``HDF5_USE_FILE_LOCKING`` instead, so it is set for the whole
    process. That costs nothing here: snn-runner's writers never rely on
    HDF5's lock (they write private temporary names and rename them).
    """
    import h5py

    if "locking" in inspect.signature(h5py.File.__init__).parameters:
        return {"locking": False}
    os.environ.setdefault("HDF5_USE_FILE_LOCKING", "FALSE")
    return {}


def nir_has_metadata() -> bool:
    """Whether the installed nir's nodes take ``metadata`` (nir 1.0.3 on, which needs Python 3.9).

    The IPU image's Python 3.8 gets nir 1.0.1, whose nodes have no such
    field; snn-runner's NIR graphs carry their readout and dt there.
    """
    import dataclasses

    import nir

    return "metadata" in {f.name for f in dataclasses.fields(nir.LIF)}
