"""The CI checks of the recipes and of the syntax floor say no when they should.

scripts/check-container-files runs on a copy of the recipes with one thing
broken at a time (hadolint left out: it is the same for every copy and runs
in CI on the real files); scripts/check-syntax-floor on files with features
newer than Python 3.8.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COPIED = ("Dockerfile", ".dockerignore", "singularity.def", "singularity-ipu.def", "run", "pyproject.toml",
          "requirements", "scripts")


def check(tree: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(tree / "scripts/check-container-files"), "--no-hadolint"],
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def tree(tmp_path):
    for name in COPIED:
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, tmp_path / name)
    return tmp_path


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path.name}: the test no longer breaks what it means to"
    path.write_text(text.replace(old, new, 1))


@pytest.mark.container
def test_the_recipes_as_they_are_pass(tree):
    out = check(tree)
    assert out.returncode == 0, out.stderr
    assert "singularity-ipu.def" in out.stdout


BROKEN = {
    "IPU %test runs a script that is not in the repository": (
        "singularity-ipu.def", "scripts/smoke_test.sh --backend ipu", "scripts/ipu_smoke.sh --backend ipu",
        "singularity-ipu.def %test: /opt/snn-runner/scripts/ipu_smoke.sh comes from scripts/ipu_smoke.sh, "
        "which does not exist"),
    "no ipu stage in the Dockerfile": (
        "Dockerfile", "AS ipu\n", "AS ipu-runtime\n",
        "singularity-ipu.def: the Dockerfile has no stage 'ipu'"),
    "the ipu stage does not set Poplar's environment": (
        "Dockerfile", "ENV POPLAR_SDK_ENABLED=", "ENV POPLAR_SDK=",
        "Dockerfile stage 'ipu': ENV lacks POPLAR_SDK_ENABLED"),
    "the ipu stage forgets SNN_RUNNER_INSTALLED, while the CPU stage still has it": (
        "Dockerfile", "    SNN_RUNNER_INSTALLED=1 \\\n    SNN_RUNNER_IMAGE_CPU_OPS=0\n",
        "    SNN_RUNNER_IMAGE_CPU_OPS=0\n",
        "Dockerfile stage 'ipu': ENV lacks SNN_RUNNER_INSTALLED=1"),
    "the ipu stage does not say it has no CPU ops (its CPU smoke test would fail)": (
        "Dockerfile", " \\\n    SNN_RUNNER_IMAGE_CPU_OPS=0\n", "\n",
        "Dockerfile stage 'ipu': ENV lacks SNN_RUNNER_IMAGE_CPU_OPS"),
    "IPU recipe bootstraps from an archive nobody writes": (
        "singularity-ipu.def", "From: build/image/snn-runner-ipu.tar", "From: build/image/ipu.tar",
        "singularity-ipu.def: From: build/image/ipu.tar is not the archive scripts/build-ipu-image writes"),
    "a dependency without a line for the IPU stack": (
        "requirements/ipu.txt", "\nclick==", "\n# click==",
        "requirements/ipu.txt: no line for click"),
    "TensorFlow from PyPI over tensorflow-ipu": (
        "requirements/ipu.txt", "\nh5py~=3.1.0\n", "\nh5py~=3.1.0\ntensorflow==2.6.5\n",
        "requirements/ipu.txt: lists tensorflow"),
    "the CPU recipe still checked: %test gone": (
        "singularity.def", "%test\n", "%tests\n",
        "singularity.def: %test is missing or empty"),
}


@pytest.mark.container
@pytest.mark.parametrize("case", sorted(BROKEN))
def test_a_broken_recipe_fails(tree, case):
    name, old, new, message = BROKEN[case]
    edit(tree / name, old, new)
    out = check(tree)
    assert out.returncode == 1
    assert message in out.stderr, out.stderr


@pytest.mark.container
def test_a_script_run_by_the_ipu_test_must_be_executable(tree):
    script = tree / "scripts/ipus-visible"
    script.chmod(script.stat().st_mode & ~(stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH))
    out = check(tree)
    assert out.returncode == 1
    assert "singularity-ipu.def %test: /opt/snn-runner/scripts/ipus-visible is run but scripts/ipus-visible " \
           "is not executable" in out.stderr, out.stderr


def floor(*paths: Path) -> subprocess.CompletedProcess:
    # the venv's vermin (the pinned one) before anything else on PATH
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run([sys.executable, str(ROOT / "scripts/check-syntax-floor"), *map(str, paths)],
                          capture_output=True, text=True, timeout=300, env=env)


def test_syntax_floor_passes_the_package():
    out = floor()
    assert out.returncode == 0, out.stderr
    assert "Python 3.8+" in out.stdout


def test_syntax_floor_rejects_newer_python(tmp_path):
    postponed = tmp_path / "postponed.py"
    postponed.write_text(
        "from __future__ import annotations\n"
        "def ok(x: list[int] | None) -> dict[str, int]:\n"  # annotations: strings, never evaluated
        "    return {}\n"
        "Alias = dict[str, int]\n"                          # evaluated: 3.9
        "Maybe = int | None\n"                               # evaluated: 3.10
        "flags = 1 | 2\n"                                    # ints: fine
        "def f(s: str, a, b):\n"
        "    return s.removeprefix('x'), list(zip(a, b, strict=True))\n")
    plain = tmp_path / "plain.py"
    plain.write_text("def g(x: list[int]) -> None:\n    match x:\n        case _:\n            pass\n")
    out = floor(postponed, plain)
    assert out.returncode == 1
    err = out.stderr
    assert "postponed.py:4: dict[str, int] is evaluated at run time" in err
    assert "postponed.py:5: int | None is evaluated at run time" in err
    assert "zip(strict)" in err
    assert "postponed.py:8: .removeprefix() is str/bytes's from Python 3.9 on" in err
    # a module without the future import evaluates its annotations on 3.8
    assert "plain.py:1: list[int] is evaluated at run time" in err
    assert "pattern matching" in err
    assert "postponed.py:2" not in err and "postponed.py:6" not in err
