"""NIR export: the graph's structure and values, the model against an independent NIR simulator, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import h5py
import nir
import numpy as np
import pytest
from click.testing import CliRunner

from snn_runner.cli.export import export
from snn_runner.export import default_dt, to_nir, write_nir
from snn_runner.results.network import SavedNetwork, read_network, write_network

sys.path.insert(0, str(Path(__file__).resolve().parent))
from nir_simulator import simulate  # noqa: E402

SIZES = (20, 30, 25, 5)
STEPS = 100
SAMPLES = 48
INPUT_RATE = 0.1  # fraction of input neurons spiking per step
ENCODING = {"dataset": "random", "sensor_size": [20], "id_formula": "x", "dt_ms": 2.0, "downsample": None,
            "time_steps": STEPS}


def make_network(seed: int = 0, epoch: int = 3) -> SavedNetwork:
    rng = np.random.default_rng(seed)
    weights, alpha, threshold = [], [], []
    # per-layer weight offsets and spreads that make every layer spike at a few % (checked below)
    shape = [(0.035, 0.08), (0.1, 0.15), (0.15, 0.2)]
    for l, (n_pre, n) in enumerate(zip(SIZES[:-1], SIZES[1:])):
        mean, spread = shape[l]
        weights.append((mean + spread * rng.standard_normal((n_pre, n))).astype(np.float32))
        alpha.append(rng.uniform(0.85, 0.97, n).astype(np.float32))
        threshold.append(rng.uniform(0.8, 1.2, n).astype(np.float32))
    return SavedNetwork(
        sizes=SIZES, capacities=SIZES[1:], input_capacity=8, input_scale=10.0, beta=10.0, readout="spike_count",
        weights=weights, alpha=alpha, threshold=threshold,
        threshold2=[0.9 * t for t in threshold[:-1]] + [np.full(SIZES[-1], -np.inf, np.float32)],
        encoding=dict(ENCODING), epoch=epoch)


def random_input(seed: int = 1):
    """Sparse input spikes like the model takes: ids [N, T, K] ascending, -1 padded; count [N, T]."""
    rng = np.random.default_rng(seed)
    n_in, k = SIZES[0], 8
    ids = np.full((SAMPLES, STEPS, k), -1, np.int32)
    count = np.zeros((SAMPLES, STEPS), np.int32)
    frames = np.zeros((SAMPLES, STEPS, n_in))
    for b in range(SAMPLES):
        for t in range(STEPS):
            c = min(k, rng.binomial(n_in, INPUT_RATE))
            chosen = np.sort(rng.choice(n_in, c, replace=False))
            ids[b, t, :c] = chosen
            count[b, t] = c
            frames[b, t, chosen] = 1.0
    return ids, count, frames


def write_result(path: Path, net: SavedNetwork | None, best: SavedNetwork | None = None) -> Path:
    with h5py.File(path, "w") as f:
        f.attrs["schema_version"] = 2 if net is not None else 1
        if net is not None:
            write_network(f.create_group("model"), net)
        if best is not None:
            write_network(f.create_group("model_best"), best)
    return path


# -- the graph ---------------------------------------------------------------------------------------------------

def test_graph_structure_values_and_metadata_round_trip(tmp_path):
    net = make_network()
    dt = default_dt(net)
    assert dt == pytest.approx(0.002)
    path = tmp_path / "net.nir"
    write_nir(net, path, dt)
    g = nir.read(path)

    expected = {"input": nir.Input, "linear1": nir.Linear, "lif1": nir.LIF, "delay1": nir.Delay,
                "linear2": nir.Linear, "lif2": nir.LIF, "delay2": nir.Delay, "linear3": nir.Linear,
                "lif3": nir.LIF, "output": nir.Output}
    assert {k: type(v) for k, v in g.nodes.items()} == expected
    assert sorted(g.edges) == sorted([("input", "linear1"), ("linear1", "lif1"), ("lif1", "delay1"),
                                      ("delay1", "linear2"), ("linear2", "lif2"), ("lif2", "delay2"),
                                      ("delay2", "linear3"), ("linear3", "lif3"), ("lif3", "output")])
    assert list(g.nodes["input"].input_type["input"]) == [SIZES[0]]
    assert list(g.nodes["output"].output_type["output"]) == [SIZES[-1]]
    for l in range(1, 4):
        lin, lif = g.nodes[f"linear{l}"], g.nodes[f"lif{l}"]
        np.testing.assert_array_equal(lin.weight, net.weights[l - 1].T)
        assert lin.weight.dtype == np.float32
        alpha = net.alpha[l - 1].astype(np.float64)
        np.testing.assert_allclose(lif.tau, dt / (1 - alpha), rtol=1e-15)
        np.testing.assert_allclose(1 - dt / lif.tau, alpha, rtol=0, atol=1e-7)  # Euler decay = alpha
        np.testing.assert_array_equal(lif.r, np.full(SIZES[l], 10.0))
        np.testing.assert_array_equal(lif.v_leak, 0.0)
        np.testing.assert_array_equal(lif.v_reset, 0.0)
        np.testing.assert_array_equal(lif.v_threshold, net.threshold[l - 1].astype(np.float64))
        assert lif.tau.shape == lif.v_threshold.shape == (SIZES[l],)
        assert int(lif.metadata["layer"]) == l
    for l in (1, 2):
        d = g.nodes[f"delay{l}"]
        np.testing.assert_allclose(d.delay, np.full(SIZES[l], dt))
        assert int(d.metadata["steps"]) == 1

    m = g.metadata
    assert m["format"] == "snn-runner network"
    assert float(m["dt"]) == pytest.approx(dt) and m["time_unit"] == "s"
    assert m["readout"] == "spike_count" and "summed over all time steps" in m["readout_rule"]
    assert m["readout_node"] == "lif3"
    assert int(m["interlayer_delay_steps"]) == 1
    assert "v_reset" in m["reset"] and "v >= v_threshold" in m["fire_condition"]
    assert "1 during one step" in m["spike_amplitude"]
    assert json.loads(m["encoding_json"]) == ENCODING
    assert int(m["time_steps"]) == STEPS
    assert list(m["sizes"]) == list(SIZES) and list(m["capacities"]) == list(SIZES[1:])
    assert int(m["input_capacity"]) == 8 and float(m["input_scale"]) == 10.0 and int(m["epoch"]) == 3
    assert [p.name for p in tmp_path.iterdir()] == ["net.nir"]  # no temporaries left


def test_dt_defaults_and_bad_values():
    net = make_network()
    net.encoding = {}
    assert default_dt(net) == 0.001
    assert float(to_nir(net).metadata["dt"]) == 0.001
    with pytest.raises(ValueError, match="dt"):
        to_nir(net, 0.0)
    net.alpha[0][0] = 1.0
    with pytest.raises(ValueError, match="alpha"):
        to_nir(net, 0.001)


def test_simulator_semantics_on_a_hand_built_graph():
    """The simulator against hand-computed values: one LIF neuron, a delay of two steps, a reset."""
    dt = 0.001
    g = nir.NIRGraph(
        nodes={"in": nir.Input(input_type=np.array([1])), "w": nir.Linear(weight=np.array([[1.0]])),
               "lif": nir.LIF(tau=np.array([0.002]), r=np.array([2.0]), v_leak=np.array([0.0]),
                              v_threshold=np.array([1.2]), v_reset=np.array([0.0])),
               "d": nir.Delay(delay=np.array([0.002])), "out": nir.Output(output_type=np.array([1]))},
        edges=[("in", "w"), ("w", "lif"), ("lif", "d"), ("d", "out")], metadata={"dt": dt})
    x = np.ones((1, 5, 1))
    rec = simulate(g, x)
    # v: 0 -> 0.5*0 + 0.5*2 = 1.0 (no spike) -> 0.5 + 1 = 1.5 (spike, reset) -> 1.0 -> 1.5 (spike) -> 1.0
    np.testing.assert_array_equal(rec["lif"][0, :, 0], [0, 1, 0, 1, 0])
    np.testing.assert_array_equal(rec["out"][0, :, 0], [0, 0, 0, 1, 0])


# -- the model against the NIR simulator --------------------------------------------------------------------------

def _run_model(net: SavedNetwork, ids, count):
    import tensorflow as tf

    from snn_runner.backend import get_backend
    from snn_runner.model import NetworkSpec, Parameters, build_model
    from snn_runner.neuron.lif import LIFParameters

    spec = NetworkSpec(sizes=net.sizes, capacities=net.capacities, input_capacity=net.input_capacity,
                       lif=LIFParameters(input_scale=net.input_scale, beta=net.beta), weight_scale=1.0,
                       readout=net.readout)
    params = Parameters(spec, seed=0)
    for var, w in zip(params.weights, net.weights):
        var.assign(w)
    params.alpha = [tf.constant(a) for a in net.alpha]
    params.threshold = [tf.constant(t) for t in net.threshold]
    params.threshold2 = [tf.constant(t) for t in net.threshold2]
    model = build_model("dense", spec, params, get_backend("cpu"))
    ids, count = tf.constant(ids), tf.constant(count)
    trains = [t.numpy() for t in model.spike_trains(ids, count)]
    logits = model(ids, count).logits.numpy()
    return trains, logits


def test_model_and_nir_simulator_agree(tmp_path):
    net = make_network()
    ids, count, frames = random_input()
    path = tmp_path / "net.nir"
    write_nir(net, path)
    graph = nir.read(path)

    trains, logits = _run_model(net, ids, count)
    rec = simulate(graph, frames)  # NIR's own firing rule, v > v_threshold

    agreement = []
    for l, ours in enumerate(trains, start=1):
        theirs = rec[f"lif{l}"]
        assert ours.shape == theirs.shape == (SAMPLES, STEPS, SIZES[l])
        rate = ours.mean()
        assert 0.005 < rate < 0.15, f"layer {l} spikes at {rate:.3%}; the test needs sparse, non-silent layers"
        agreement.append(float((ours == theirs).mean()))
    print("NIR agreement per layer:", ", ".join(f"{a:.6f}" for a in agreement),
          "rates:", ", ".join(f"{t.mean():.3%}" for t in trains))
    assert min(agreement) >= 0.999, agreement

    # readout: logits = output spikes summed over time (NIR's Output node receives the last LIF's spikes)
    np.testing.assert_array_equal(logits, trains[-1].sum(axis=1))
    counts = rec["output"].sum(axis=1)
    assert np.mean(counts == logits) >= 0.99
    assert (np.argmax(counts, axis=1) == np.argmax(logits, axis=1)).all()
    assert len(set(np.argmax(logits, axis=1))) > 1  # the predictions are not all one class


@pytest.mark.parametrize("readout", ["membrane_max", "membrane_mean"])
def test_membrane_readout_is_an_li_node_and_the_simulator_agrees(tmp_path, readout):
    net = make_network()
    net.readout = readout
    net.threshold[-1] = np.full(SIZES[-1], np.inf, np.float32)  # never used by a readout that does not fire
    ids, count, frames = random_input()
    path = tmp_path / "net.nir"
    write_nir(net, path)
    graph = nir.read(path)
    assert isinstance(graph.nodes["li3"], nir.LI) and "lif3" not in graph.nodes
    assert ("li3", "output") in graph.edges and graph.metadata["readout_node"] == "li3"
    assert graph.metadata["readout"] == readout

    trains, logits = _run_model(net, ids, count)
    rec = simulate(graph, frames)
    assert min(float((ours == rec[f"lif{l}"]).mean()) for l, ours in enumerate(trains[:-1], start=1)) >= 0.999
    membrane = rec["output"]  # what reaches the Output node: the LI membrane at every step
    nir_logits = membrane.max(axis=1) if readout == "membrane_max" else membrane.mean(axis=1)
    assert np.ptp(logits) > 0.1
    np.testing.assert_allclose(nir_logits, logits, rtol=1e-3, atol=1e-3 * np.abs(logits).max())
    assert (np.argmax(nir_logits, axis=1) == np.argmax(logits, axis=1)).mean() >= 0.97


# -- the command --------------------------------------------------------------------------------------------------

def _error_lines(result):
    return [line for line in result.output.splitlines() if line.startswith("Error:")]


def test_cli_writes_the_graph_and_best(tmp_path):
    result_file = write_result(tmp_path / "run.h5", make_network(epoch=9), best=make_network(seed=5, epoch=4))
    out = tmp_path / "net.nir"
    res = CliRunner().invoke(export, [str(result_file), "--format", "nir", "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert str(out) in res.output and "10 nodes" in res.output and "bytes" in res.output
    g = nir.read(out)
    assert int(g.metadata["epoch"]) == 9
    np.testing.assert_array_equal(g.nodes["linear1"].weight, read_network(result_file).weights[0].T)

    best = tmp_path / "best.nir"
    res = CliRunner().invoke(export, [str(result_file), "-o", str(best), "--best", "--dt", "0.5"])
    assert res.exit_code == 0, res.output
    g = nir.read(best)
    assert int(g.metadata["epoch"]) == 4 and float(g.metadata["dt"]) == pytest.approx(0.0005)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.nir", "net.nir", "run.h5"]


@pytest.mark.parametrize("case", ["missing_folder", "no_model", "no_best", "not_hdf5", "missing_file",
                                  "result_is_folder", "unknown_format", "output_is_folder"])
def test_cli_errors_write_nothing(tmp_path, case):
    good = write_result(tmp_path / "run.h5", make_network())
    out = tmp_path / "net.nir"
    args, code = [str(good), "-o", str(out)], 1
    if case == "missing_folder":
        out = tmp_path / "missing" / "net.nir"
        args = [str(good), "-o", str(out)]
    elif case == "no_model":
        args[0] = str(write_result(tmp_path / "v1.h5", None))
    elif case == "no_best":
        args.append("--best")
    elif case == "not_hdf5":
        (tmp_path / "notes.h5").write_text("not an HDF5 file\n")
        args[0] = str(tmp_path / "notes.h5")
    elif case == "missing_file":
        args[0] = str(tmp_path / "nowhere.h5")
    elif case == "result_is_folder":
        (tmp_path / "runs").mkdir()
        args[0] = str(tmp_path / "runs")
    elif case == "unknown_format":
        args += ["--format", "onnx"]
        code = 2
    elif case == "output_is_folder":
        out = tmp_path / "folder"
        out.mkdir()
        args = [str(good), "-o", str(out)]
        code = None  # click refuses a folder for dir_okay=False (2), or the writer does (1)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    res = CliRunner().invoke(export, args)
    if code is None:
        assert res.exit_code in (1, 2), res.output
    else:
        assert res.exit_code == code, res.output
    assert len(_error_lines(res)) == 1, res.output
    assert "Traceback" not in res.output
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written, no folder created
    if case == "missing_folder":
        assert not out.parent.exists() and "does not exist" in res.output
    if case == "no_best":
        assert "/model_best" in res.output
    if case == "not_hdf5":
        assert "not an HDF5 file" in res.output


def test_export_help_does_not_import_tensorflow():
    code = ("import sys\nfrom click.testing import CliRunner\nfrom snn_runner.cli.export import export\n"
            "r = CliRunner().invoke(export, ['--help'])\nassert r.exit_code == 0, r.output\n"
            "assert 'tensorflow' not in sys.modules\nimport snn_runner.export\n"
            "assert 'tensorflow' not in sys.modules\nprint('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr
