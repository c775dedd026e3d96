"""Tile mapping of a spiking network onto one or more IPUs.

The IPU has no shared memory: each tile computes only on its own SRAM, and
everything else is explicit exchange. The Poplar ops of this package
(ops/poplar) therefore split every layer's neurons into contiguous slices,
one per *compute tile*, and keep on that tile all the weights that end at
those neurons (the columns of W^T) together with the neurons' state. A
layer's input is then nothing but the presynaptic spike ids, which are
broadcast to its tiles, and its output nothing but each tile's short list of
spiking / carrier ids. Per batch row, one *row tile* of the layer merges
those lists into the K-slot sparse format and keeps the per-row records.

This module decides, for given sizes:

- how many compute tiles each layer gets (neurons per tile), such that every
  tile's memory (weight columns, state, spike buffers) stays under capacity;
- how many row tiles each layer reserves for spike selection, and which row
  tile serves which batch row;
- which IPU each layer lives on, layers split contiguously across IPUs;

and hands the result to the C++ graph builders as the op's attribute string
(``NetworkPlan.to_attributes``), parsed by ops/poplar/common/plan.hpp. The
memory figures are estimates of what the builders allocate per tile, not
counting code and vertex state, which ``IpuTarget.reserved_bytes_per_tile``
sets aside.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from typing import Mapping, Sequence

__all__ = [
    "IpuTarget",
    "LayerPlan",
    "NetworkDoesNotFitError",
    "NetworkPlan",
    "compute_tile_bytes",
    "plan_layer",
    "plan_network",
    "row_bytes",
]

PLAN_VERSION = 1  # must match kVersion in ops/poplar/common/plan.hpp
_F = 4  # bytes of a float32 / int32


@dataclass(frozen=True)
class IpuTarget:
    """The hardware the plan is for (defaults: one Graphcore Mk2 IPU)."""

    num_ipus: int = 1
    tiles_per_ipu: int = 1472
    bytes_per_tile: int = 624 * 1024
    # Code, vertex state, worker stacks and exchange buffers live in tile
    # memory too; the plan keeps its tensors below bytes - reserved.
    reserved_bytes_per_tile: int = 96 * 1024
    workers_per_tile: int = 6

    def __post_init__(self):
        for name in ("num_ipus", "tiles_per_ipu", "bytes_per_tile", "workers_per_tile"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"IpuTarget.{name} must be a positive int, got {value!r}")
        if not 0 <= self.reserved_bytes_per_tile < self.bytes_per_tile:
            raise ValueError(
                f"IpuTarget.reserved_bytes_per_tile must be in [0, {self.bytes_per_tile}), "
                f"got {self.reserved_bytes_per_tile}"
            )

    @property
    def usable_bytes_per_tile(self) -> int:
        return self.bytes_per_tile - self.reserved_bytes_per_tile

    @property
    def total_tiles(self) -> int:
        return self.num_ipus * self.tiles_per_ipu


class NetworkDoesNotFitError(ValueError):
    """The network (with this batch size and capacities) needs more tile memory than the target has."""


# ---------------------------------------------------------------------------
# Memory model (bytes), mirroring the tensors the graph builders create.
# ---------------------------------------------------------------------------


def compute_tile_bytes(
    n_in: int,
    width: int,
    *,
    batch: int,
    capacity: int,
    pre_capacity: int,
    local: int,
    training: bool,
) -> int:
    """Bytes of one compute tile holding ``width`` neurons with fan-in ``n_in``."""
    b = n_in * width * _F  # weight columns
    b += 3 * width * _F  # alpha, theta, theta2
    b += batch * width * _F  # membrane
    b += batch * (pre_capacity + 1) * _F  # presynaptic ids + count
    b += batch * (4 * local + 2) * _F  # spike/carrier ids + surrogates, counts
    if training:
        b += n_in * width * _F  # weight gradient
        b += 2 * batch * width * _F  # eps, input-current gradient
        b += 2 * batch * capacity * _F  # slot ids + slot gradients
        b += batch * (pre_capacity + 1) * _F  # presynaptic packet of the backward pass
        b += batch * pre_capacity * _F  # presynaptic slot partial dots
    return b


def row_bytes(
    *,
    slices: int,
    local: int,
    capacity: int,
    time_steps: int,
    training: bool,
    logits: int = 0,
    input_capacity: int = 0,
    next_capacity: int = 0,
) -> int:
    """Bytes that one batch row of one layer needs on its row tile.

    ``logits`` is n_L for the last layer, ``input_capacity`` K0 for the first
    (its row tile also stages the input sequence), ``next_capacity`` is this
    layer's K when a next layer exists (its backward packet is built here).
    """
    b = slices * (4 * local + 2) * _F  # landed per-tile lists
    b += time_steps * (2 * capacity + 2) * _F  # records: ids, surrogates, count, dropped
    b += (capacity + 1) * _F + 2 * _F  # transmitted ids + count, step counters
    b += logits * _F
    if input_capacity:
        b += time_steps * (input_capacity + 1) * _F + (input_capacity + 2) * _F
    if training:
        b += 3 * capacity * _F + 2 * _F  # slot packet, ds, counters
        b += logits * _F
        if next_capacity:
            b += (next_capacity + 1) * _F
        if input_capacity:
            b += (input_capacity + 2) * _F
    return b


# ---------------------------------------------------------------------------
# Plan
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerPlan:
    index: int
    ipu: int
    n_in: int
    n_out: int
    capacity: int
    tiles: tuple[int, ...]  # compute tile (global id) of each slice
    starts: tuple[int, ...]  # slice s holds neurons [starts[s], starts[s+1])
    selection_tiles: tuple[int, ...]  # row tiles reserved for spike selection
    row_tiles: tuple[int, ...]  # row tile of each batch row

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(e - b for b, e in zip(self.starts[:-1], self.starts[1:]))

    @property
    def local_capacity(self) -> int:
        """Entries in each tile's spike/carrier list (ops: LayerPlan::localCapacity)."""
        return min(self.capacity, max(self.widths))

    def slices(self) -> list[tuple[int, int, int]]:
        """(tile, first neuron, end neuron) of each slice."""
        return [(t, b, e) for t, b, e in zip(self.tiles, self.starts[:-1], self.starts[1:])]


@dataclass(frozen=True)
class NetworkPlan:
    target: IpuTarget
    batch_size: int
    time_steps: int
    input_capacity: int
    training: bool
    layers: tuple[LayerPlan, ...]
    tile_bytes: Mapping[int, int] = field(repr=False)  # estimated bytes per used tile

    @property
    def ipus_used(self) -> tuple[int, ...]:
        return tuple(sorted({layer.ipu for layer in self.layers}))

    def to_attributes(self, input_scale: float = 10.0, beta: float = 10.0) -> str:
        """The attribute string of the Poplar ops (canonical: equals plan.hpp's format())."""
        parts = [
            f"version={PLAN_VERSION}",
            f"batch={self.batch_size}",
            f"time_steps={self.time_steps}",
            f"input_capacity={self.input_capacity}",
            f"workers={self.target.workers_per_tile}",
            f"input_scale={_float32_text(input_scale)}",
            f"beta={_float32_text(beta)}",
            f"layers={len(self.layers)}",
        ]
        for layer in self.layers:
            p = f"l{layer.index}."
            parts += [
                f"{p}n_in={layer.n_in}",
                f"{p}n_out={layer.n_out}",
                f"{p}capacity={layer.capacity}",
                f"{p}tiles={_join(layer.tiles)}",
                f"{p}starts={_join(layer.starts)}",
                f"{p}row_tiles={_join(layer.row_tiles)}",
            ]
        return ";".join(parts)


def _float32_text(x: float) -> str:
    # plan.hpp stores floats as float and prints them with %.9g; rounding to
    # float32 first makes both sides write the same digits.
    return "%.9g" % struct.unpack("f", struct.pack("f", float(x)))[0]


def _join(values: Sequence[int]) -> str:
    return ",".join(str(v) for v in values)


def _positive_int(value, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) and not hasattr(value, "__index__"):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    value = int(value)
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


@dataclass
class _Layer:
    index: int
    n_in: int
    n_out: int
    capacity: int
    pre_capacity: int
    min_tiles: int = 0
    tiles: int = 0
    row_tiles: int = 0
    ipu: int = 0

    @property
    def work(self) -> int:
        return max(1, self.n_in) * self.n_out


def plan_network(
    sizes: Sequence[int],
    capacities: Sequence[int],
    *,
    batch_size: int,
    time_steps: int = 1,
    input_capacity: int = 1,
    target: IpuTarget | None = None,
    training: bool = True,
    spread: bool = True,
) -> NetworkPlan:
    """Map a network ``sizes = [n_0, n_1, ..., n_L]`` onto ``target``.

    ``capacities`` are the K_l of layers 1..L, ``input_capacity`` is K0 (the
    input spike slots per step). With ``spread`` the tiles an IPU has left
    after every layer's minimum are handed out to its layers in proportion to
    their synapse counts (more tiles, fewer neurons per tile, more parallel
    work); without it every layer gets its minimum.

    Raises NetworkDoesNotFitError, naming the layer and the numbers, when the
    network cannot be placed.
    """
    target = target or IpuTarget()
    sizes = [_positive_int(n, f"sizes[{i}]", minimum=0 if i == 0 else 1) for i, n in enumerate(sizes)]
    if len(sizes) < 2:
        raise ValueError("sizes must name the input and at least one layer")
    capacities = [_positive_int(k, f"capacities[{i}]") for i, k in enumerate(capacities)]
    if len(capacities) != len(sizes) - 1:
        raise ValueError(f"capacities has {len(capacities)} entries but there are {len(sizes) - 1} layers")
    for i, (k, n) in enumerate(zip(capacities, sizes[1:])):
        if k > n:
            raise ValueError(f"capacities[{i}] = {k} exceeds the size of layer {i} ({n} neurons)")
    batch = _positive_int(batch_size, "batch_size")
    steps = _positive_int(time_steps, "time_steps")
    k_in = _positive_int(input_capacity, "input_capacity", minimum=0)
    usable = target.usable_bytes_per_tile

    layers = [
        _Layer(l, sizes[l], sizes[l + 1], capacities[l], k_in if l == 0 else capacities[l - 1])
        for l in range(len(capacities))
    ]

    def tile_bytes(layer: _Layer, tiles: int) -> int:
        width = -(-layer.n_out // tiles)
        return compute_tile_bytes(
            layer.n_in, width, batch=batch, capacity=layer.capacity, pre_capacity=layer.pre_capacity,
            local=min(layer.capacity, width), training=training,
        )

    def per_row(layer: _Layer, tiles: int) -> int:
        last = layer.index == len(layers) - 1
        return row_bytes(
            slices=tiles, local=min(layer.capacity, -(-layer.n_out // tiles)), capacity=layer.capacity,
            time_steps=steps, training=training, logits=layer.n_out if last else 0,
            input_capacity=k_in if layer.index == 0 else 0,
            next_capacity=0 if last else layer.capacity,
        )

    def row_tiles_needed(layer: _Layer, tiles: int, strict: bool = True) -> int:
        need = per_row(layer, tiles)
        rows_per_tile = usable // need
        if rows_per_tile == 0:
            if not strict:  # while spreading: too many slices, a sign to back off
                return target.tiles_per_ipu + 1
            raise NetworkDoesNotFitError(
                f"layer {layer.index}: one batch row needs {need} bytes on its row tile (records of "
                f"T = {steps} steps x K = {layer.capacity} slots and the lists of {tiles} tiles) but a "
                f"tile has {usable} usable bytes; use fewer time steps, a lower capacity or fewer "
                f"tiles per layer"
            )
        return -(-batch // rows_per_tile)

    # Fewest compute tiles per layer (bytes grow with the slice width).
    for layer in layers:
        if tile_bytes(layer, layer.n_out) > usable:
            raise NetworkDoesNotFitError(
                f"layer {layer.index}: a single neuron needs {tile_bytes(layer, layer.n_out)} bytes "
                f"(fan-in {layer.n_in}, batch {batch}{', training' if training else ''}) but a tile "
                f"has {usable} usable bytes of {target.bytes_per_tile}"
            )
        lo, hi = 1, layer.n_out
        while lo < hi:
            mid = (lo + hi) // 2
            if tile_bytes(layer, mid) <= usable:
                hi = mid
            else:
                lo = mid + 1
        layer.min_tiles = lo
        layer.row_tiles = row_tiles_needed(layer, lo)

    demand = [layer.min_tiles + layer.row_tiles for layer in layers]
    for layer, d in zip(layers, demand):
        if d > target.tiles_per_ipu:
            raise NetworkDoesNotFitError(
                f"layer {layer.index} ({layer.n_in} -> {layer.n_out}, batch {batch}) needs at least "
                f"{d} tiles ({layer.min_tiles} compute + {layer.row_tiles} row tiles) but an IPU has "
                f"{target.tiles_per_ipu}; layers are not split across IPUs"
            )
    groups = _contiguous_split(layers, demand, target)
    if groups is None:
        raise NetworkDoesNotFitError(
            f"the network needs at least {sum(demand)} tiles (per layer: "
            f"{', '.join(str(d) for d in demand)}) and does not fit on {target.num_ipus} IPU(s) of "
            f"{target.tiles_per_ipu} tiles with whole layers per IPU; use more IPUs, a smaller batch "
            f"or smaller layers"
        )

    plans = []
    tile_use: dict[int, int] = {}
    for ipu, group in enumerate(groups):
        if not group:
            continue
        for layer in group:
            layer.ipu = ipu
            layer.tiles = layer.min_tiles
        if spread:
            _spread(group, target.tiles_per_ipu, row_tiles_needed)
        for layer in group:
            layer.row_tiles = row_tiles_needed(layer, layer.tiles)
        next_tile = ipu * target.tiles_per_ipu
        for layer in group:
            compute = tuple(range(next_tile, next_tile + layer.tiles))
            next_tile += layer.tiles
            selection = tuple(range(next_tile, next_tile + layer.row_tiles))
            next_tile += layer.row_tiles
            starts = tuple(layer.n_out * s // layer.tiles for s in range(layer.tiles + 1))
            rows_each = -(-batch // layer.row_tiles)
            row_tiles = tuple(selection[b // rows_each] for b in range(batch))
            plan = LayerPlan(layer.index, ipu, layer.n_in, layer.n_out, layer.capacity, compute, starts,
                             selection, row_tiles)
            for tile, begin, end in plan.slices():
                tile_use[tile] = compute_tile_bytes(
                    layer.n_in, end - begin, batch=batch, capacity=layer.capacity,
                    pre_capacity=layer.pre_capacity, local=plan.local_capacity, training=training,
                )
            need = per_row(layer, layer.tiles)
            for tile in selection:
                tile_use[tile] = need * row_tiles.count(tile)
            plans.append(plan)
        assert next_tile <= (ipu + 1) * target.tiles_per_ipu
    return NetworkPlan(target, batch, steps, k_in, training, tuple(plans), tile_use)


def _contiguous_split(layers: list[_Layer], demand: list[int], target: IpuTarget):
    """Layers in order onto IPUs, each IPU a contiguous run whose tile demand
    fits, minimising the largest synapse count on one IPU (balanced work).
    Returns one (possibly empty) list of layers per IPU, or None."""
    n, p = len(layers), target.num_ipus
    inf = math.inf
    # best[i][q]: smallest max load placing the first i layers on q IPUs.
    best = [[inf] * (p + 1) for _ in range(n + 1)]
    cut = [[0] * (p + 1) for _ in range(n + 1)]
    for q in range(p + 1):
        best[0][q] = 0
    for q in range(1, p + 1):
        for i in range(1, n + 1):
            tiles = work = 0
            for j in range(i, -1, -1):  # IPU q holds layers [j, i)
                if j < i:
                    tiles += demand[j]
                    work += layers[j].work
                    if tiles > target.tiles_per_ipu:
                        break
                cost = max(best[j][q - 1], work)
                if cost < best[i][q]:
                    best[i][q], cut[i][q] = cost, j
    if best[n][p] == inf:
        return None
    groups, i = [], n
    for q in range(p, 0, -1):
        j = cut[i][q]
        groups.append(layers[j:i])
        i = j
    return groups[::-1]


def _spread(group: list[_Layer], tiles_per_ipu: int, row_tiles_needed) -> None:
    """Hands the IPU's spare tiles to its layers by synapse count, then backs
    off while the row tiles that more slices need no longer fit."""
    spare = tiles_per_ipu - sum(layer.min_tiles + layer.row_tiles for layer in group)
    total_work = sum(layer.work for layer in group)
    for layer in group:
        extra = spare * layer.work // total_work
        layer.tiles = min(layer.n_out, layer.min_tiles + extra)
    while True:
        used = sum(layer.tiles + row_tiles_needed(layer, layer.tiles, strict=False) for layer in group)
        if used <= tiles_per_ipu:
            return
        widest = max(group, key=lambda layer: layer.tiles - layer.min_tiles)
        if widest.tiles == widest.min_tiles:  # cannot happen: the minimum fits
            raise AssertionError("spread could not shrink back to the minimum")
        widest.tiles = max(widest.min_tiles, widest.tiles - max(1, used - tiles_per_ipu))


def plan_layer(
    kind: str,
    n_in: int,
    n_out: int,
    capacity: int,
    *,
    batch_size: int,
    target: IpuTarget | None = None,
    training: bool = True,
) -> NetworkPlan:
    """Plan for one standalone op.

    ``kind="matmul"``: sparse binary matmul of ``[B, capacity]`` spikes over
    ``n_in`` inputs with ``n_out`` outputs (capacity is the spike capacity of
    the input). ``kind="select"``: spike selection of ``n_out`` neurons into
    ``capacity`` slots (``n_in`` is ignored: no weights).
    """
    if kind == "matmul":
        return plan_network([n_in, n_out], [min(capacity, n_out)], batch_size=batch_size,
                            input_capacity=capacity, target=target, training=training)
    if kind == "select":
        return plan_network([0, n_out], [capacity], batch_size=batch_size, input_capacity=0,
                            target=target, training=training)
    raise ValueError(f"kind must be 'matmul' or 'select', got {kind!r}")
