"""The package's imports run one way: job file -> config -> data -> model -> runner -> results.

Every ``import snn_runner.X`` (module level or inside a function: a lazy
import is still a dependency) must point to an earlier layer or to the same
package. Peers on one layer (the trainer and the bench) never import each
other; what runs both sits above them in ``snn_runner.dispatch``.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "snn_runner"

# Lowest first. A module may import its own package and any package of an earlier layer.
LAYERS = [
    ("compat",),     # what differs between the CPU stack and the IPU image's (Python 3.8, tf.keras 2.6)
    ("console", "files"),  # quiet TensorFlow start-up; atomic writer, output layout
    ("config",),     # validated run configuration
    ("jobs",),       # job files -> configurations
    ("data",),       # datasets -> sparse input
    ("neuron",),     # LIF dynamics
    ("sparse",),     # sparse format and compiled CPU ops
    ("ipu",),        # IPU planner and Poplar glue
    ("backend",),    # which ops a model runs on
    ("model",),      # the three implementations, compiled steps
    ("distribute",),  # the workers of a data-parallel run, their strategy and launcher
    ("runner", "bench"),  # training loop, timing
    ("results",),    # HDF5 results, collect, report
    ("dispatch", "evaluate", "export"),  # runs and tasks start to end; a saved network run again or exported
    ("slurm",),      # submit, the in-job task, status
    ("cli",),        # the commands
]
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def _package_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "snn_runner":
        return None
    return parts[1] if len(parts) > 1 else ""


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            if node.module == "snn_runner":  # from snn_runner import X
                found += [(node.lineno, f"snn_runner.{alias.name}") for alias in node.names]
    return found


def _own_package(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def test_every_package_has_a_layer():
    packages = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    modules = {p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    assert packages | modules == set(RANK), "add new packages to LAYERS"


def test_imports_point_to_earlier_layers_only():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == PACKAGE / "__init__.py":
            continue
        own = _own_package(path)
        for line, module in _imports(path):
            target = _package_of(module)
            if target in (None, "", own):  # outside the package, its root (version), or itself
                continue
            if RANK[target] >= RANK[own]:
                wrong.append(f"{path.relative_to(PACKAGE.parent)}:{line} ({own}) imports {module}")
    assert not wrong, "imports against the one-way order:\n" + "\n".join(wrong)


def test_the_check_catches_a_backward_import(tmp_path):
    # the test itself must be able to fail: a runner module importing the CLI is flagged
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from snn_runner.cli import main\n")
    assert [m for _, m in _imports(bad)] == ["snn_runner.cli"]
    assert RANK[_package_of("snn_runner.cli")] > RANK["runner"]
