"""A small NumPy simulator of NIR graphs, written from NIR's node definitions.

It knows nothing of snn_runner's model: it walks the graph's nodes and edges
generically and integrates every node with forward Euler in steps of ``dt``
(float64). The tests run exported networks through it to check that the
graph means what the trained model computed.

Node semantics (NIR 1.0 definitions; x = the sum of the node's incoming edges
at the current step, held constant during the step):

    Input    y = the external input of the step
    Output   y = x (recorded)
    Linear   y = W x                    W: [out, in]
    Affine   y = W x + b
    Scale    y = s * x
    LI       tau dv/dt = (v_leak - v) + r x;         y = v
    LIF      tau dv/dt = (v_leak - v) + r x;  spike when v crosses v_threshold, then v = v_reset
    Delay    y(t) = x(t - delay)

Discrete time, step k (t = k dt):

* LIF: ``v <- v + (dt/tau) (v_leak - v + r x)``; the neuron spikes
  (``y = 1`` for this step, else 0) when the integrated ``v`` is past the
  threshold, and its ``v`` is set to ``v_reset`` right away, so the next step
  integrates from ``v_reset``. This is the continuous LIF's "fire and reset
  when v reaches v_threshold" sampled once per step: the reset happens at the
  spike, i.e. before the next step's integration (which is the same as
  snn_runner's "a neuron that fired restarts from zero at the start of the
  next step", since nothing changes v between the two). NIR 1.0's LIF text
  fires on ``v > v_threshold``; ``fire_at_threshold=True`` makes it ``>=``
  (snn_runner's H(0) = 1). The two differ only when v equals the threshold
  exactly.
* A spike is the value 1 for one step (the current ``W x`` of a spike is ``W``
  for the duration dt), not a Dirac delta of area 1.
* Delay: ``d = round(delay/dt)`` steps per element (the delay must be a whole
  number of steps), a ring buffer: ``y[k] = x[k - d]``, zeros before the
  first d steps. Delays of at least one step cut the dependency, so a node's
  inputs through them come from earlier steps (this also lets feedback loops
  run, as long as each loop passes a delay of >= 1 step).

Within a step, nodes run in a topological order of the edges (edges into
delays of >= 1 step left out); a cycle without a delay is an error.
"""

from __future__ import annotations

from collections import defaultdict, deque

import nir
import numpy as np

SUPPORTED = (nir.Input, nir.Output, nir.Linear, nir.Affine, nir.Scale, nir.LI, nir.LIF, nir.Delay)


def _delay_steps(node: nir.Delay, dt: float) -> np.ndarray:
    steps = np.asarray(node.delay, np.float64) / dt
    whole = np.rint(steps)
    if np.any(np.abs(steps - whole) > 1e-6) or np.any(whole < 0):
        raise ValueError(f"delay {node.delay} is not a whole number of steps of dt={dt}")
    return whole.astype(np.int64)


def _order(graph: nir.NIRGraph, buffered: set[str]) -> list[str]:
    """Kahn's algorithm; edges into ``buffered`` delay nodes do not constrain the order."""
    indegree = {name: 0 for name in graph.nodes}
    after = defaultdict(list)
    for src, dst in graph.edges:
        if dst in buffered:
            continue
        indegree[dst] += 1
        after[src].append(dst)
    ready = deque(sorted(n for n, d in indegree.items() if d == 0))
    order = []
    while ready:
        name = ready.popleft()
        order.append(name)
        for nxt in after[name]:
            indegree[nxt] -= 1
            if indegree[nxt] == 0:
                ready.append(nxt)
    if len(order) != len(graph.nodes):
        stuck = sorted(set(graph.nodes) - set(order))
        raise ValueError(f"the graph has a cycle without a delay of >= 1 step through {stuck}")
    return order


def simulate(graph: nir.NIRGraph, inputs, dt: float | None = None, fire_at_threshold: bool = False,
             ) -> dict[str, np.ndarray]:
    """Run ``graph`` on ``inputs`` ``[N, T, *shape]`` (an array for a single Input node, or a dict by node name).

    Returns every node's output at every step, ``{name: float64 [N, T, *shape]}``
    (LIF nodes: their 0/1 spikes; Output nodes: what reaches them).
    """
    if dt is None:
        dt = float(graph.metadata["dt"])
    input_names = [n for n, node in graph.nodes.items() if isinstance(node, nir.Input)]
    if not isinstance(inputs, dict):
        if len(input_names) != 1:
            raise ValueError(f"the graph has inputs {input_names}; pass a dict")
        inputs = {input_names[0]: inputs}
    inputs = {k: np.asarray(v, np.float64) for k, v in inputs.items()}
    if set(inputs) != set(input_names):
        raise ValueError(f"inputs for {sorted(inputs)}, but the graph's Input nodes are {sorted(input_names)}")
    n_samples, steps = next(iter(inputs.values())).shape[:2]

    for name, node in graph.nodes.items():
        if not isinstance(node, SUPPORTED):
            raise NotImplementedError(f"node {name}: {type(node).__name__} is not simulated here")
    sources = defaultdict(list)
    for src, dst in graph.edges:
        sources[dst].append(src)

    delays = {n: _delay_steps(node, dt) for n, node in graph.nodes.items() if isinstance(node, nir.Delay)}
    buffered = {n for n, d in delays.items() if d.min() >= 1}
    order = _order(graph, buffered)

    def out_shape(name):
        node = graph.nodes[name]
        return tuple(int(s) for s in np.atleast_1d(next(iter(node.output_type.values()))))

    # state: membranes of LI/LIF nodes, ring buffers of delays
    v = {n: np.zeros((n_samples,) + out_shape(n)) for n, node in graph.nodes.items()
         if isinstance(node, (nir.LI, nir.LIF))}
    for n in v:  # start at rest (v_leak)
        v[n] += np.asarray(graph.nodes[n].v_leak, np.float64)
    ring = {n: np.zeros((int(d.max()) + 1, n_samples) + d.shape) for n, d in delays.items()}
    record = {n: np.zeros((n_samples, steps) + out_shape(n)) for n in graph.nodes}

    for k in range(steps):
        out = {}

        def incoming(name):
            total = 0.0
            for src in sources[name]:
                total = total + out[src]
            return total

        def delayed(name):
            d = delays[name]
            size = ring[name].shape[0]
            idx = (k - d) % size  # per element: the slot written d steps ago
            got = np.take_along_axis(ring[name], idx.reshape((1, 1) + d.shape), axis=0)[0]
            return np.where(k - d >= 0, got, 0.0)

        for name in order:
            node = graph.nodes[name]
            if isinstance(node, nir.Input):
                y = inputs[name][:, k]
            elif isinstance(node, nir.Output):
                y = incoming(name)
            elif isinstance(node, nir.Linear):
                y = incoming(name) @ np.asarray(node.weight, np.float64).T
            elif isinstance(node, nir.Affine):
                y = incoming(name) @ np.asarray(node.weight, np.float64).T + np.asarray(node.bias, np.float64)
            elif isinstance(node, nir.Scale):
                y = incoming(name) * np.asarray(node.scale, np.float64)
            elif isinstance(node, (nir.LI, nir.LIF)):
                tau = np.asarray(node.tau, np.float64)
                r = np.asarray(node.r, np.float64)
                leak = np.asarray(node.v_leak, np.float64)
                u = v[name] + (dt / tau) * (leak - v[name] + r * incoming(name))
                if isinstance(node, nir.LI):
                    v[name] = u
                    y = u
                else:
                    thr = np.asarray(node.v_threshold, np.float64)
                    fired = u >= thr if fire_at_threshold else u > thr
                    y = fired.astype(np.float64)
                    v[name] = np.where(fired, np.asarray(node.v_reset, np.float64), u)
            elif isinstance(node, nir.Delay):
                if name in buffered:
                    y = delayed(name)
                else:  # some element has no delay: needs this step's input, which is ready (topological order)
                    ring[name][k % ring[name].shape[0]] = incoming(name)
                    y = delayed(name)
            out[name] = y
            record[name][:, k] = y
        for name in buffered:  # the inputs of this step enter the delay lines after everything has run
            ring[name][k % ring[name].shape[0]] = incoming(name)
    return record
