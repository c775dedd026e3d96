"""A ``SavedNetwork`` as a NIR graph (Neuromorphic Intermediate Representation).

The discrete model, per layer l and step t (ARCHITECTURE.md section 2):

    reset:      u <- u - u * H(u_prev - theta)    (a neuron that fired at t-1 restarts from 0)
    integrate:  u <- alpha * u + (1 - alpha) * c * I,   I = W_l . s_{l-1}
    fire:       s  = H(u - theta)                 (H(0) = 1)

Layer 1 reads the input spikes of step t; layer l > 1 reads layer l-1's spikes
of step t-1 (a one-step delay between layers).

NIR's LIF is ``tau dv/dt = (v_leak - v) + r I``, firing and resetting to
``v_reset`` at the threshold. Its forward-Euler step of length ``dt`` is
``v <- (1 - dt/tau) v + (dt/tau) (v_leak + r I)``, which is the integrate step
above with

    tau = dt / (1 - alpha),  r = c,  v_leak = 0,  v_threshold = theta,  v_reset = 0.

Resetting to 0 right after the spike (NIR) and restarting from 0 at the next
step (ours) give the same membranes after every integration, because
nothing happens to v in between. The graph is

    input -> linear1 -> lif1 -> delay1 -> linear2 -> lif2 -> ... -> linearL -> lifL -> output

With a membrane readout (``membrane_max`` / ``membrane_mean``) the last layer
never fires: it is NIR's leaky integrator ``LI`` (same tau, r and v_leak), the
last node is ``liL`` instead of ``lifL``, and the Output node receives its
membrane, whose maximum or mean over the steps is the logits.

with ``Linear.weight`` ``[n_l, n_{l-1}]`` (NIR's ``[out, in]``, the transpose
of how the model stores it) and ``Delay.delay`` one step, ``dt`` seconds, per
neuron. Times are in seconds. The conventions NIR itself does not fix (the
readout, dt, what a spike's amplitude is, the input encoding) are in the
graph's metadata; docs/nir.md lists the keys.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import nir
import numpy as np

from snn_runner import compat
from snn_runner.files import atomic_write
from snn_runner.results.network import SavedNetwork

FORMAT = "snn-runner network"

# What the readout conventions mean, recorded with the graph.
READOUT_RULES = {
    "spike_count": "logits[j] = number of spikes of output neuron j summed over all time steps; "
                   "prediction = argmax of the logits (the lowest index wins a tie)",
    "membrane_max": "logits[j] = the largest membrane v of output LI neuron j over all time steps (v starts at 0); "
                    "prediction = argmax of the logits (the lowest index wins a tie)",
    "membrane_mean": "logits[j] = the mean membrane v of output LI neuron j over all time steps (v starts at 0); "
                     "prediction = argmax of the logits (the lowest index wins a tie)",
}


def _membrane(readout: str) -> bool:
    return readout != "spike_count"


def default_dt(net: SavedNetwork) -> float:
    """The step length in seconds: the encoding's ``dt_ms`` (1 ms when it is not recorded)."""
    dt_ms = (net.encoding or {}).get("dt_ms")
    return float(dt_ms if dt_ms is not None else 1.0) / 1000.0


def neuron_node(l: int, layers: int, readout: str) -> str:
    """The name of layer l's neuron node: ``lifL``, or ``liL`` for a membrane readout's last layer."""
    return f"li{l}" if l == layers and _membrane(readout) else f"lif{l}"


def node_names(layers: int, readout: str = "spike_count") -> list[str]:
    """The graph's nodes in the order a spike passes them."""
    names = ["input"]
    for l in range(1, layers + 1):
        if l > 1:
            names.append(f"delay{l - 1}")
        names += [f"linear{l}", neuron_node(l, layers, readout)]
    return names + ["output"]


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("snn-runner")
    except Exception:  # noqa: BLE001 - a source checkout without metadata
        return "unknown"


def _metadata(net: SavedNetwork, dt: float) -> dict:
    encoding = dict(net.encoding or {})
    meta = {
        "format": FORMAT,
        "snn_runner_version": _version(),
        "dt": float(dt),
        "time_unit": "s",
        "integration": "forward Euler with step dt: v <- (1 - dt/tau) * v + (dt/tau) * (v_leak + r * I)",
        "spike_amplitude": "a spike is the value 1 during one step of dt (I = W s with s in {0, 1}), "
                           "not a Dirac delta of area 1",
        "fire_condition": "v >= v_threshold after the step's integration",
        "reset": "a neuron that fired at step t starts step t+1 from v_reset (= 0); "
                 "equivalently v is set to v_reset right after the spike",
        "interlayer_delay_steps": 1,
        "interlayer_delay": "layer 1 reads the input of step t; layer l > 1 reads layer l-1's spikes of "
                            "step t-1 (the delay nodes, one step of dt each)",
        "readout": net.readout,
        "readout_rule": READOUT_RULES[net.readout],
        "readout_node": neuron_node(net.layers, net.layers, net.readout),
        "sizes": np.asarray(net.sizes, np.int64),
        "capacities": np.asarray(net.capacities, np.int64),
        "input_capacity": int(net.input_capacity),
        "input_scale": float(net.input_scale),
        "surrogate_beta": float(net.beta),
        "epoch": int(net.epoch),
        # the encoding may hold lists and None, which NIR's HDF5 writer cannot store as such
        "encoding_json": json.dumps(encoding, sort_keys=True),
    }
    if encoding.get("time_steps") is not None:
        meta["time_steps"] = int(encoding["time_steps"])
    return meta


def to_nir(net: SavedNetwork, dt: float | None = None) -> nir.NIRGraph:
    """``net`` as a NIR graph with steps of ``dt`` seconds (default: ``default_dt(net)``)."""
    if dt is None:
        dt = default_dt(net)
    dt = float(dt)
    if not (math.isfinite(dt) and dt > 0):
        raise ValueError(f"dt must be a positive number of seconds, not {dt}")
    if not compat.nir_has_metadata():
        # a graph without its readout and dt would be read as another network
        raise ValueError("the installed nir cannot hold the graph's metadata (readout, dt); NIR export needs "
                         "nir >= 1.0.3, which needs Python >= 3.9: export the result file with the CPU image "
                         "or a host install")
    if net.readout not in READOUT_RULES:
        raise ValueError(f"readout {net.readout!r} has no NIR mapping here; expected one of "
                         f"{', '.join(READOUT_RULES)}")
    nodes: dict[str, nir.NIRNode] = {"input": nir.Input(input_type=np.array([net.sizes[0]]))}
    for l in range(1, net.layers + 1):
        n_pre, n = net.sizes[l - 1], net.sizes[l]
        w = np.asarray(net.weights[l - 1], np.float32)
        if w.shape != (n_pre, n):
            raise ValueError(f"weights of layer {l} have shape {w.shape}, expected {(n_pre, n)}")
        alpha = np.asarray(net.alpha[l - 1], np.float64)
        if alpha.shape != (n,) or not np.all((alpha >= 0) & (alpha < 1)):
            raise ValueError(f"alpha of layer {l} must be {n} values in [0, 1) (tau = dt / (1 - alpha))")
        theta = np.asarray(net.threshold[l - 1], np.float64)
        if l > 1:
            nodes[f"delay{l - 1}"] = nir.Delay(delay=np.full(n_pre, dt), metadata={"steps": 1})
        nodes[f"linear{l}"] = nir.Linear(weight=np.ascontiguousarray(w.T), metadata={"layer": l})
        if l == net.layers and _membrane(net.readout):  # the readout: integrates, never fires
            nodes[f"li{l}"] = nir.LI(tau=dt / (1.0 - alpha), r=np.full(n, float(net.input_scale)),
                                     v_leak=np.zeros(n), metadata={"layer": l})
            continue
        nodes[f"lif{l}"] = nir.LIF(
            tau=dt / (1.0 - alpha),
            r=np.full(n, float(net.input_scale)),
            v_leak=np.zeros(n),
            v_threshold=theta,
            v_reset=np.zeros(n),
            metadata={"layer": l},
        )
    nodes["output"] = nir.Output(output_type=np.array([net.sizes[-1]]))
    names = node_names(net.layers, net.readout)
    edges = list(zip(names[:-1], names[1:]))
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=_metadata(net, dt))


def check_target(path: str | Path) -> Path:
    """``path`` if a file can be written there: its folder must exist (it is not created)."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; give the NIR file's name, e.g. {path / 'net.nir'}")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"cannot write {path}: the folder {path.parent} does not exist "
                                f"(create it first; nothing was written)")
    return path


def write_nir(net: SavedNetwork, path: str | Path, dt: float | None = None) -> nir.NIRGraph:
    """Write ``to_nir(net, dt)`` to ``path`` whole (temporary file, read back, renamed); the graph written."""
    path = check_target(path)
    graph = to_nir(net, dt)
    with atomic_write(path, verify=lambda tmp: nir.read(tmp)) as tmp:
        nir.write(tmp, graph)
    return graph
