"""Shared fixtures, and the test markers and switches.

Markers (registered in pyproject.toml, `--strict-markers`):
  slurm      needs the real one-node Slurm of tests/slurm_fixtures.py; added
             here to every test using the `slurm_cluster` fixture
  container  builds or inspects the container image / recipes
  slow       one of the individually slowest tests (tens of seconds)
`make test-fast` deselects all three; `make test` runs everything.

Switches:
  SNN_REQUIRE_SLURM=1  Slurm that cannot start fails the tests (tests/slurm_fixtures.py)
  SNN_REQUIRE_OPS=1    tests skipped because the compiled ops library is not
                       built fail instead (CI, where `./run setup` built them)
"""

import os
import re

# Importing snn_runner (below) quiets TensorFlow's start-up lines.
import numpy as np
import pytest

from snn_runner.config import DataConfig, ModelConfig, RunConfig, TrainConfig

# Skip reasons of the tests that need the compiled ops, e.g. "compiled ops not
# built (run scripts/build-ops)", "compiled CPU ops not found at ...".
_OPS_SKIP = re.compile(r"compiled (\w+ )?ops", re.IGNORECASE)


def _require_ops() -> bool:
    return os.environ.get("SNN_REQUIRE_OPS") == "1"


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "slurm_cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slurm)


def _skip_reason(report) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2])
    return str(longrepr)


def _fail_missing_ops(report) -> None:
    if not (_require_ops() and report.skipped):
        return
    if hasattr(report, "wasxfail"):
        return
    reason = _skip_reason(report)
    if _OPS_SKIP.search(reason):
        report.outcome = "failed"
        report.longrepr = f"compiled ops required (SNN_REQUIRE_OPS=1) but skipped: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _fail_missing_ops(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    # module-level pytest.skip(..., allow_module_level=True)
    outcome = yield
    _fail_missing_ops(outcome.get_result())


@pytest.fixture
def easy_config() -> RunConfig:
    """A small randman task that a dense network learns in seconds."""
    return RunConfig(
        model=ModelConfig(hidden=(64,), implementation="dense"),
        data=DataConfig(channels=40, classes=4, time_steps=30, train_samples_per_class=100,
                        test_samples_per_class=50, seed=3),
        train=TrainConfig(epochs=6, batch_size=25, learning_rate=5e-3, seed=1),
    ).validate()


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture
def offline(monkeypatch):
    """No network, no environment folders; the test fails if anything tried to connect."""
    from tests.fixtures import block_network

    monkeypatch.delenv("SNN_RUNNER_DATA_DIR", raising=False)
    monkeypatch.delenv("SNN_RUNNER_CACHE_DIR", raising=False)
    calls = block_network(monkeypatch)
    yield calls
    assert calls == [], f"network was touched: {calls}"
