"""snn_runner.compat: the Keras 3 / TensorFlow 2.21 path here, and the tf.keras 2.6 path against stand-ins.

The IPU image's stack (tensorflow-ipu 2.6, tf.keras 2.6) is not installable
here, so its side is checked with small classes that have the shape of
tf.keras 2.6's OptimizerV2 where it differs from Keras 3: ``variables`` a
method, no ``build``, slots made by ``_create_all_weights``, no
``weight_decay`` argument, no AdamW, no ``update_step``; and h5py 3.1's
``File`` without ``locking``.
"""

from __future__ import annotations

import os
import sys
import types

import pytest

from snn_runner import compat


class OldOptimizer:
    """The parts of tf.keras 2.6's OptimizerV2 that compat relies on."""

    def __init__(self, learning_rate=0.001, beta_1=0.9, name="Adam", **kwargs):
        if kwargs:
            raise TypeError(f"unexpected keyword arguments {sorted(kwargs)}")
        self.learning_rate = learning_rate
        self._weights: list = []

    def _create_all_weights(self, var_list):
        self._weights = ["iterations", *(f"m/{v}" for v in var_list), *(f"v/{v}" for v in var_list)]

    def variables(self):
        return self._weights

    def _resource_apply_dense(self, grad, var, apply_state=None):
        raise NotImplementedError


@pytest.fixture
def old_keras(monkeypatch):
    fake = types.SimpleNamespace(__version__="2.6.0",
                                 optimizers=types.SimpleNamespace(Adam=OldOptimizer, SGD=OldOptimizer))
    monkeypatch.setattr(compat, "keras", lambda: fake)
    return fake


def test_keras_3_here():
    import keras

    k = compat.keras()
    assert k.optimizers.Adam is keras.optimizers.Adam
    assert compat.fused_adam_supported()
    assert compat.optimizer_class("AdamW") is keras.optimizers.AdamW
    opt = compat.new_optimizer(compat.optimizer_class("AdamW"), 1e-3, weight_decay=0.01)
    assert opt.weight_decay == pytest.approx(0.01)


def test_build_and_variables_on_keras_3():
    import tensorflow as tf

    w = tf.Variable(tf.zeros([3, 2]))
    opt = compat.new_optimizer(compat.optimizer_class("Adam"), 1e-3)
    compat.build_optimizer(opt, [w])
    found = compat.optimizer_variables(opt)
    assert isinstance(found, list)
    # the step counter, the learning rate and the two slots of w, all made before any step
    assert [tuple(v.shape) for v in found if tuple(v.shape) == (3, 2)] == [(3, 2), (3, 2)]
    assert len(found) == len(opt.variables)


def test_tf_keras_2_6_optimizer_shape(old_keras):
    opt = compat.new_optimizer(compat.optimizer_class("Adam"), 0.01)
    assert opt.learning_rate == 0.01
    compat.build_optimizer(opt, ["w"])
    assert compat.optimizer_variables(opt) == ["iterations", "m/w", "v/w"]
    assert not compat.fused_adam_supported()


def test_tf_keras_2_6_refuses_what_it_lacks(old_keras):
    with pytest.raises(compat.CompatError, match=r"keras.optimizers.AdamW does not exist in Keras 2.6.0"):
        compat.optimizer_class("AdamW")
    # silently dropping the decay would record a run that did not happen
    with pytest.raises(compat.CompatError, match="has no weight_decay"):
        compat.new_optimizer(OldOptimizer, 0.01, weight_decay=0.1)


def test_xla_option_follows_tf_function(monkeypatch):
    import tensorflow as tf

    assert compat.xla_function_options() == {"jit_compile": True}

    def old_function(func=None, input_signature=None, autograph=True, experimental_compile=None):
        return func

    monkeypatch.setattr(tf, "function", old_function)
    assert compat.xla_function_options() == {"experimental_compile": True}


def test_h5_unlocked_per_file_where_h5py_can(monkeypatch):
    monkeypatch.delenv("HDF5_USE_FILE_LOCKING", raising=False)
    assert compat.h5_unlocked() == {"locking": False}
    assert "HDF5_USE_FILE_LOCKING" not in os.environ


def test_h5_unlocked_on_h5py_3_1(monkeypatch):
    class File:  # h5py 3.1's File: no locking argument
        def __init__(self, name, mode="r", driver=None, libver=None, userblock_size=None, swmr=False, **kwds):
            pass

    monkeypatch.setitem(sys.modules, "h5py", types.SimpleNamespace(File=File))
    monkeypatch.delenv("HDF5_USE_FILE_LOCKING", raising=False)
    assert compat.h5_unlocked() == {}
    assert os.environ["HDF5_USE_FILE_LOCKING"] == "FALSE"


def test_nir_export_refuses_a_nir_without_metadata(monkeypatch):
    import dataclasses

    import nir

    from snn_runner.export.nir import to_nir

    assert compat.nir_has_metadata()

    @dataclasses.dataclass
    class OldLIF:  # nir 1.0.1's LIF: its parameters, no metadata
        tau: object
        r: object

    monkeypatch.setattr(nir, "LIF", OldLIF)
    assert not compat.nir_has_metadata()
    with pytest.raises(ValueError, match=r"NIR export needs nir >= 1.0.3"):
        to_nir(object(), dt=0.001)
