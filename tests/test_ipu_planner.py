"""Invariants of the IPU tile planner (snn_runner/ipu/planner.py)."""

from __future__ import annotations

import math

import pytest

from snn_runner.ipu.planner import (
    IpuTarget,
    NetworkDoesNotFitError,
    compute_tile_bytes,
    plan_layer,
    plan_network,
    row_bytes,
)

NMNIST = dict(sizes=[1156, 1470, 1460, 10], capacities=[147, 146, 10], batch_size=48, time_steps=100,
              input_capacity=64)

NETWORKS = {
    "nmnist_mk2": (NMNIST, IpuTarget()),
    "nmnist_2ipu": (NMNIST, IpuTarget(num_ipus=2)),
    "nmnist_inference_min": (dict(NMNIST, training=False, spread=False), IpuTarget()),
    "shd_small_tiles": (dict(sizes=[700, 400, 300, 20], capacities=[40, 30, 20], batch_size=32, time_steps=50,
                             input_capacity=32), IpuTarget(tiles_per_ipu=300, bytes_per_tile=256 * 1024,
                                                           reserved_bytes_per_tile=16 * 1024, num_ipus=3)),
    "tiny": (dict(sizes=[5, 3, 2], capacities=[3, 1], batch_size=1, time_steps=2, input_capacity=1),
             IpuTarget(tiles_per_ipu=8)),
    "deep_4ipu": (dict(sizes=[200] + [500] * 6 + [10], capacities=[50] * 6 + [10], batch_size=16, time_steps=20,
                       input_capacity=20), IpuTarget(num_ipus=4, tiles_per_ipu=200)),
}


def _plan(name):
    kwargs, target = NETWORKS[name]
    return plan_network(target=target, **kwargs), kwargs, target


def _recomputed_bytes(plan, kwargs):
    """Bytes per tile, recomputed from the layer plans alone (not trusting tile_bytes)."""
    training = kwargs.get("training", True)
    out = {}
    layers = plan.layers
    for layer in layers:
        pre = plan.input_capacity if layer.index == 0 else layers[layer.index - 1].capacity
        for tile, begin, end in layer.slices():
            out[tile] = out.get(tile, 0) + compute_tile_bytes(
                layer.n_in, end - begin, batch=plan.batch_size, capacity=layer.capacity, pre_capacity=pre,
                local=layer.local_capacity, training=training)
        last = layer.index == len(layers) - 1
        per_row = row_bytes(slices=len(layer.tiles), local=layer.local_capacity, capacity=layer.capacity,
                            time_steps=plan.time_steps, training=training, logits=layer.n_out if last else 0,
                            input_capacity=plan.input_capacity if layer.index == 0 else 0,
                            next_capacity=0 if last else layer.capacity)
        for tile in layer.row_tiles:
            out[tile] = out.get(tile, 0) + per_row
    return out


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_no_tile_over_capacity(name):
    plan, kwargs, target = _plan(name)
    recomputed = _recomputed_bytes(plan, kwargs)
    assert recomputed == dict(plan.tile_bytes)
    assert max(recomputed.values()) <= target.usable_bytes_per_tile <= target.bytes_per_tile


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_every_neuron_mapped_exactly_once(name):
    plan, kwargs, _ = _plan(name)
    assert [layer.n_out for layer in plan.layers] == kwargs["sizes"][1:]
    for layer in plan.layers:
        owner = [None] * layer.n_out
        for tile, begin, end in layer.slices():
            assert 0 <= begin < end <= layer.n_out  # no empty slice
            for neuron in range(begin, end):
                assert owner[neuron] is None, f"layer {layer.index} neuron {neuron} mapped twice"
                owner[neuron] = tile
        assert None not in owner
        assert layer.starts[0] == 0 and layer.starts[-1] == layer.n_out
        assert max(layer.widths) - min(layer.widths) <= 1  # even split


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_tiles_are_used_once_and_on_the_layers_ipu(name):
    plan, kwargs, target = _plan(name)
    seen = set()
    for layer in plan.layers:
        own = layer.tiles + layer.selection_tiles
        assert len(set(own)) == len(own)
        assert not seen & set(own), "a tile serves two layers or two roles"
        seen |= set(own)
        lo, hi = layer.ipu * target.tiles_per_ipu, (layer.ipu + 1) * target.tiles_per_ipu
        assert all(lo <= t < hi for t in own), f"layer {layer.index} leaves IPU {layer.ipu}"
        # Every batch row has a row tile, and only reserved tiles serve rows.
        assert len(layer.row_tiles) == plan.batch_size
        assert set(layer.row_tiles) == set(layer.selection_tiles)
        assert layer.local_capacity == min(layer.capacity, max(layer.widths))
    assert set(plan.tile_bytes) == seen
    assert len(seen) <= target.total_tiles


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_multi_ipu_split_is_contiguous(name):
    plan, _, target = _plan(name)
    ipus = [layer.ipu for layer in plan.layers]
    assert ipus == sorted(ipus), "layers must go to IPUs in order"
    assert all(0 <= i < target.num_ipus for i in ipus)
    for ipu in set(ipus):
        members = [i for i, x in enumerate(ipus) if x == ipu]
        assert members == list(range(members[0], members[-1] + 1))
        # Within an IPU, each layer's tiles form one contiguous block after the previous layer's.
        blocks = [sorted(plan.layers[i].tiles + plan.layers[i].selection_tiles) for i in members]
        for block in blocks:
            assert block == list(range(block[0], block[-1] + 1))
        assert all(a[-1] < b[0] for a, b in zip(blocks, blocks[1:]))


def test_layers_spread_over_ipus_to_balance_work():
    plan = plan_network([300, 800, 800, 10], [40, 40, 10], batch_size=8, time_steps=10, input_capacity=16,
                        target=IpuTarget(num_ipus=2))
    # 300*800 vs 800*800 + 800*10 synapses: the big middle layer gets an IPU of its own side.
    assert [layer.ipu for layer in plan.layers] == [0, 1, 1]
    assert plan.ipus_used == (0, 1)


def test_network_too_big_for_one_ipu_uses_two():
    kwargs = dict(sizes=[4000, 8000, 8000, 10], capacities=[100, 100, 10], batch_size=32, time_steps=30,
                  input_capacity=64)
    with pytest.raises(NetworkDoesNotFitError, match=r"does not fit on 1 IPU\(s\) of 1472 tiles"):
        plan_network(**kwargs)
    plan = plan_network(target=IpuTarget(num_ipus=2), **kwargs)
    assert [layer.ipu for layer in plan.layers] == [0, 1, 1]


def test_spread_uses_spare_tiles_and_minimum_is_tight():
    minimal = plan_network(spread=False, **NMNIST)
    spread = plan_network(**NMNIST)
    usable = IpuTarget().usable_bytes_per_tile
    for lo, hi in zip(minimal.layers, spread.layers):
        assert len(hi.tiles) >= len(lo.tiles)
        t = len(lo.tiles)
        if t > 1:  # one tile fewer would overflow a tile
            width = math.ceil(lo.n_out / (t - 1))
            pre = NMNIST["input_capacity"] if lo.index == 0 else minimal.layers[lo.index - 1].capacity
            assert compute_tile_bytes(lo.n_in, width, batch=48, capacity=lo.capacity, pre_capacity=pre,
                                      local=min(lo.capacity, width), training=True) > usable
    assert len(spread.tile_bytes) > len(minimal.tile_bytes)
    assert len(spread.tile_bytes) <= IpuTarget().tiles_per_ipu


def test_tile_parameters_are_respected():
    small = IpuTarget(tiles_per_ipu=64, bytes_per_tile=128 * 1024, reserved_bytes_per_tile=8 * 1024)
    plan = plan_network([50, 40, 5], [8, 5], batch_size=4, time_steps=6, input_capacity=5, target=small)
    assert max(plan.tile_bytes.values()) <= 120 * 1024
    assert max(plan.tile_bytes) < 64
    assert IpuTarget().tiles_per_ipu == 1472 and IpuTarget().bytes_per_tile == 624 * 1024


# ---------------------------------------------------------------------------
# Clear errors
# ---------------------------------------------------------------------------


def test_error_when_a_single_neuron_does_not_fit():
    with pytest.raises(NetworkDoesNotFitError, match=r"layer 0: a single neuron needs \d+ bytes \(fan-in 200000"):
        plan_network([200000, 10], [2], batch_size=4)


def test_error_when_a_layer_needs_more_than_one_ipu():
    with pytest.raises(NetworkDoesNotFitError,
                       match=r"layer 1 \(8000 -> 16000, batch 32\) needs at least \d+ tiles .* an IPU has 1472"):
        plan_network([100, 8000, 16000, 10], [100, 100, 10], batch_size=32, time_steps=10, input_capacity=10,
                     target=IpuTarget(num_ipus=8))


def test_error_when_the_network_needs_more_ipus():
    with pytest.raises(NetworkDoesNotFitError,
                       match=r"needs at least \d+ tiles \(per layer: \d+, \d+\) and does not fit on 1 IPU"):
        plan_network([1000, 2000, 2000], [100, 100], batch_size=32, time_steps=30, input_capacity=64,
                     target=IpuTarget(tiles_per_ipu=100))


def test_error_when_one_batch_row_does_not_fit_its_row_tile():
    with pytest.raises(NetworkDoesNotFitError, match=r"one batch row needs \d+ bytes .*T = 5000 steps x K = 400"):
        plan_network([100, 400], [400], batch_size=2, time_steps=5000, input_capacity=10)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(sizes=[10, 5], capacities=[6]), ValueError, r"capacities\[0\] = 6 exceeds the size of layer 0"),
        (dict(sizes=[10, 5], capacities=[2, 2]), ValueError, "capacities has 2 entries but there are 1 layers"),
        (dict(sizes=[10], capacities=[]), ValueError, "at least one layer"),
        (dict(sizes=[10, 0], capacities=[1]), ValueError, r"sizes\[1\] must be >= 1"),
        (dict(sizes=[10, 5], capacities=[2.5]), TypeError, r"capacities\[0\] must be an int"),
        (dict(sizes=[10, 5], capacities=[2], batch_size=0), ValueError, "batch_size must be >= 1"),
    ],
)
def test_bad_arguments(kwargs, error, message):
    kwargs = {"batch_size": 2, **kwargs}
    with pytest.raises(error, match=message):
        plan_network(**kwargs)


@pytest.mark.parametrize(
    "field, value",
    [("num_ipus", 0), ("tiles_per_ipu", -1), ("bytes_per_tile", 0), ("workers_per_tile", True),
     ("reserved_bytes_per_tile", 624 * 1024)],
)
def test_bad_targets(field, value):
    with pytest.raises(ValueError, match=field):
        IpuTarget(**{field: value})


# ---------------------------------------------------------------------------
# The hand-over to the C++ builders
# ---------------------------------------------------------------------------


def test_attribute_string_is_canonical():
    plan = plan_network([5, 3, 2], [2, 1], batch_size=2, time_steps=4, input_capacity=3,
                        target=IpuTarget(tiles_per_ipu=16), spread=False)
    assert plan.to_attributes(input_scale=10.0, beta=0.1) == (
        "version=1;batch=2;time_steps=4;input_capacity=3;workers=6;input_scale=10;beta=0.100000001;layers=2;"
        "l0.n_in=5;l0.n_out=3;l0.capacity=2;l0.tiles=0;l0.starts=0,3;l0.row_tiles=1,1;"
        "l1.n_in=3;l1.n_out=2;l1.capacity=1;l1.tiles=2;l1.starts=0,2;l1.row_tiles=3,3"
    )


def test_plan_layer_kinds():
    matmul = plan_layer("matmul", 30, 20, 7, batch_size=3)
    assert (matmul.layers[0].n_in, matmul.layers[0].n_out, matmul.input_capacity) == (30, 20, 7)
    select = plan_layer("select", 99, 20, 7, batch_size=3)
    assert (select.layers[0].n_in, select.layers[0].capacity) == (0, 7)
    with pytest.raises(ValueError, match="kind"):
        plan_layer("conv", 1, 1, 1, batch_size=1)
