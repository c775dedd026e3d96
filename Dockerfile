# Container image of snn-runner: the package installed (non-editable) with
# its custom TensorFlow ops compiled against the image's own TensorFlow.
#
#   scripts/build-image                    # docker or podman, then smoke test (and SIF if apptainer is here)
#   docker build -t snn-runner .           # the same by hand
#   docker run --rm -v "$PWD:/work" snn-runner              # main job -> ./results/
#   docker run --rm snn-runner ./run --help                 # or: snn-runner --help
#   docker build --target ipu -t snn-runner:ipu .          # the IPU variant (below; unverified)
#
# Build arguments (see docs/container.md):
#   BASE_IMAGE    Debian/Ubuntu-like image with or without Python 3.11+
#                 (without: python3 + venv come from apt, e.g. a debootstrap base)
#   TF_PACKAGE    the TensorFlow distribution; GPU: tensorflow[and-cuda]==2.21.0;
#                 empty: use the base image's TensorFlow
#   IPU_BASE_IMAGE  base of the IPU variant (--target ipu): Graphcore's
#                 TensorFlow 2 image (Poplar SDK 3.x, tensorflow-ipu 2.6,
#                 Python 3.8); pin the tag that matches the host's Poplar driver
#   SNN_OPS_ARCH  -march of the compiled ops; a portable level, not "native",
#                 because the image runs on other machines than the builder
#   VERSION, GIT_REVISION, BUILD_DATE   labels only
#
# A host whose TLS goes through a local CA can hand the CA bundle in as the
# build secret "ca_bundle" (scripts/build-image does this); it is mounted for
# the pip steps only and never stored in a layer.
#
# RUN lines are plain POSIX sh: podman/buildah build OCI-format images by
# default, which ignore SHELL, and the debootstrap base's /bin/sh is dash.

ARG BASE_IMAGE=python:3.11-slim-bookworm
ARG IPU_BASE_IMAGE=graphcore/tensorflow:2

# ===========================================================================
# IPU variant (--target ipu; docs/ipu.md). It comes before the CPU stages so
# that the CPU image stays the default (last) target. Builders that build only
# the stages their target needs (BuildKit, podman/buildah 1.28 and newer) never
# pull the Graphcore base for a CPU build. The stack is Python 3.8 with
# tensorflow-ipu 2.6, so requirements/ipu.txt replaces pyproject.toml's
# dependencies, which need Python >= 3.10 and numpy 2.4.
# NOT BUILT OR RUN in this project (no Graphcore image or SDK where it was
# written): only linted, by scripts/check-container-files.
FROM ${IPU_BASE_IMAGE} AS ipu-build
# The check fails early, naming what is missing, on a base that is not
# Graphcore's TensorFlow with the SDK enabled. python3-venv: Ubuntu's Python
# has no ensurepip without it. cmake from PyPI as in the CPU build (20.04's apt
# cmake is 3.16, CMakeLists needs 3.18).
# hadolint ignore=DL3008
RUN python3 -c 'import sys; assert sys.version_info >= (3, 8), sys.version; from tensorflow.python import ipu' \
    && command -v popc \
    && apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends g++ make python3-venv \
    && apt-get clean && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY requirements/ipu.txt requirements/
# --system-site-packages: the venv sees the base's tensorflow-ipu (and the
# numpy and h5py it was built with, which requirements/ipu.txt accepts).
# pip first: Ubuntu 20.04's venv brings pip 20.0, whose old resolver can
# install conflicting versions without a word; 25.0 is the last for Python 3.8.
RUN --mount=type=cache,target=/root/.cache/pip,sharing=locked \
    --mount=type=secret,id=ca_bundle \
    if [ -s /run/secrets/ca_bundle ]; then export PIP_CERT=/run/secrets/ca_bundle; fi; \
    export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_PROGRESS_BAR=off; \
    python3 -m venv --system-site-packages /opt/snn-runner/venv \
    && /opt/snn-runner/venv/bin/pip install "pip==25.0.1" \
    && /opt/snn-runner/venv/bin/pip install -r requirements/ipu.txt \
    && python3 -m venv /tmp/tools \
    && /tmp/tools/bin/pip install "cmake>=3.18"

# The Poplar ops only, required here rather than skipped. The CPU ops are left
# out: they do not compile against TensorFlow 2.6's headers (they use
# absl::Status and newer ThreadPool API), so in this image --backend cpu runs
# dense only (SNN_RUNNER_IMAGE_CPU_OPS=0 below tells the smoke test).
# (ops/ whole: the builders include headers shared with the CPU ops)
COPY ops/ ops/
COPY scripts/build-ipu-ops scripts/
RUN PATH="/tmp/tools/bin:${PATH}" SNN_IPU_OPS_BUILD_DIR=/tmp/ipu-ops-build SNN_REQUIRE_IPU_OPS=1 \
    scripts/build-ipu-ops

# --no-deps --ignore-requires-python: the dependencies are the ones above, and
# pyproject.toml's requires-python is the CPU stack's. The check imports the
# installed package on this Python (-I: not the source folder) and runs the
# IPU backend's own availability check (tensorflow-ipu, popc, the built ops).
COPY pyproject.toml README.md ./
COPY snn_runner/ snn_runner/
RUN --mount=type=cache,target=/root/.cache/pip,sharing=locked \
    --mount=type=secret,id=ca_bundle \
    if [ -s /run/secrets/ca_bundle ]; then export PIP_CERT=/run/secrets/ca_bundle; fi; \
    /opt/snn-runner/venv/bin/pip install --disable-pip-version-check --progress-bar off \
        --no-deps --ignore-requires-python . \
    && cp -r snn_runner/ipu/_lib "$(/opt/snn-runner/venv/bin/python -I -c 'import os, snn_runner.ipu as m; print(os.path.dirname(m.__file__))')/" \
    && /opt/snn-runner/venv/bin/python -I -c 'import snn_runner.cli; from snn_runner.ipu import require_ipu; print("IPU ops in", require_ipu().lib_dir)'

# ---------------------------------------------------------------------------
FROM ${IPU_BASE_IMAGE} AS ipu
# The same environment as the CPU runtime below, plus Poplar's: the Graphcore
# base enables the SDK through its own ENV; the defaults here keep popc and
# libpoplar reachable (the IPU backend checks popc) should a base set only
# POPLAR_SDK_ENABLED. IPU-Machine access (IPUOF_*/V-IPU settings) comes from
# the host at run time, not from the image.
ENV POPLAR_SDK_ENABLED=${POPLAR_SDK_ENABLED:-/opt/poplar}
ENV PATH=/opt/snn-runner/venv/bin:${POPLAR_SDK_ENABLED}/bin:${PATH} \
    LD_LIBRARY_PATH=${POPLAR_SDK_ENABLED}/lib${LD_LIBRARY_PATH:+:${LD_LIBRARY_PATH}} \
    PYTHONNOUSERSITE=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    SNN_RUNNER_INSTALLED=1 \
    SNN_RUNNER_IMAGE_CPU_OPS=0

COPY --from=ipu-build /opt/snn-runner/venv /opt/snn-runner/venv
COPY run /opt/snn-runner/run
COPY jobs/ /opt/snn-runner/jobs/
COPY scripts/ /opt/snn-runner/scripts/
RUN mkdir -m 1777 /work
WORKDIR /work

ARG IPU_BASE_IMAGE
ARG VERSION=dev
ARG GIT_REVISION=unknown
ARG BUILD_DATE=unknown
LABEL org.opencontainers.image.title="snn-runner-ipu" \
      org.opencontainers.image.description="snn-runner for Graphcore IPUs (tensorflow-ipu 2.6, compiled Poplar ops); unverified" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${GIT_REVISION}" \
      org.opencontainers.image.created="${BUILD_DATE}" \
      org.opencontainers.image.base.name="${IPU_BASE_IMAGE}" \
      snn-runner.tensorflow="base image (tensorflow-ipu)"
ENV SNN_RUNNER_GIT_REVISION=${GIT_REVISION}
# The CPU image's dispatch (see there).
ENTRYPOINT ["/bin/sh", "-c", "case \"${1-}\" in ./run|run) shift; exec /opt/snn-runner/run \"$@\";; ''|-*) exec /opt/snn-runner/run \"$@\";; esac; if command -v \"$1\" >/dev/null 2>&1; then exec \"$@\"; fi; exec /opt/snn-runner/run \"$@\"", "snn-runner-image"]
CMD []

# ---------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS python-base
# Python images already have a full interpreter; a bare Debian base (such as a
# debootstrap minbase) gets Debian's python3 with venv/ensurepip. The check
# keeps one Dockerfile for both rather than a second file per base.
# hadolint ignore=DL3008
RUN if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then \
        apt-get update \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-venv \
        && apt-get clean && rm -rf /var/lib/apt/lists/*; \
    fi \
    && python3 -c 'import sys; assert sys.version_info >= (3, 11), f"snn-runner needs Python >= 3.11 (numpy 2.4), base has {sys.version}"'

# ---------------------------------------------------------------------------
FROM python-base AS build
ARG TF_PACKAGE=tensorflow-cpu==2.21.0
ARG SNN_OPS_ARCH=x86-64-v3
# Compilers live in this stage only; cmake comes from PyPI because CMakeLists
# needs >= 3.18, newer than some bases' apt (e.g. Ubuntu 20.04's 3.16).
# hadolint ignore=DL3008
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends g++ make \
    && apt-get clean && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY pyproject.toml README.md ./
# Dependencies first, in their own layer, so editing Python code does not
# reinstall TensorFlow. TF_PACKAGE replaces the tensorflow-cpu pin (a GPU
# build must not get both tensorflow and tensorflow-cpu); empty TF_PACKAGE
# lets the venv see the base image's TensorFlow instead.
# The wheels are kept in a wheelhouse on the cache mount and installed from
# there: pip's own HTTP cache stayed empty in builds on this project's
# machines (the responses are not cached there), and a rebuild would download
# TensorFlow's 600 MB again.
RUN --mount=type=cache,target=/root/.cache/pip,sharing=locked \
    --mount=type=secret,id=ca_bundle \
    if [ -s /run/secrets/ca_bundle ]; then export PIP_CERT=/run/secrets/ca_bundle; fi; \
    venv_opts=""; if [ -z "${TF_PACKAGE}" ]; then venv_opts=--system-site-packages; fi; \
    wheels=/root/.cache/pip/wheelhouse; \
    export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_PROGRESS_BAR=off; \
    python3 -m venv ${venv_opts:+"$venv_opts"} /opt/snn-runner/venv \
    && python3 -c 'import re, tomllib; deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]; print("\n".join(d for d in deps if not re.match(r"tensorflow\b", d)))' > /tmp/requirements.txt \
    && if [ -n "${TF_PACKAGE}" ]; then echo "${TF_PACKAGE}" >> /tmp/requirements.txt; fi \
    && /opt/snn-runner/venv/bin/pip wheel --wheel-dir "$wheels" -r /tmp/requirements.txt \
    && /opt/snn-runner/venv/bin/pip install --no-index --find-links "$wheels" -r /tmp/requirements.txt \
    && python3 -m venv /tmp/tools \
    && /tmp/tools/bin/pip wheel --wheel-dir "$wheels" "cmake>=3.18" \
    && /tmp/tools/bin/pip install --no-index --find-links "$wheels" "cmake>=3.18"

# The CPU ops are built into the package folder, where the install below
# picks them up as package data (snn_runner/sparse/_lib/libsnn_ops.so).
# The IPU ops (ops/poplar -> snn_runner/ipu/_lib) are built only where the
# base image has the Poplar SDK; elsewhere build-ipu-ops says so and exits 0.
# The glob copies build-ipu-ops when the checkout has it.
COPY ops/ ops/
COPY scripts/build-*ops scripts/
RUN PATH="/tmp/tools/bin:${PATH}" PYTHON=/opt/snn-runner/venv/bin/python \
    SNN_OPS_ARCH="${SNN_OPS_ARCH}" SNN_OPS_BUILD_DIR=/tmp/ops-build scripts/build-ops \
    && if [ -x scripts/build-ipu-ops ]; then \
        PATH="/tmp/tools/bin:${PATH}" SNN_IPU_OPS_BUILD_DIR=/tmp/ipu-ops-build scripts/build-ipu-ops; \
    fi

# Built IPU ops are copied next to the installed snn_runner/ipu, where the
# IPU backend looks for them, whether or not they are package data. The check
# runs with -P so that it imports the installed package (with the .so as
# package data), not the source folder it stands in.
COPY snn_runner/ snn_runner/
RUN --mount=type=cache,target=/root/.cache/pip,sharing=locked \
    --mount=type=secret,id=ca_bundle \
    if [ -s /run/secrets/ca_bundle ]; then export PIP_CERT=/run/secrets/ca_bundle; fi; \
    /opt/snn-runner/venv/bin/pip install --disable-pip-version-check --progress-bar off --no-deps . \
    && if [ -n "$(ls -A snn_runner/ipu/_lib 2>/dev/null)" ]; then \
        cp -r snn_runner/ipu/_lib "$(/opt/snn-runner/venv/bin/python -P -c 'import os, snn_runner.ipu as m; print(os.path.dirname(m.__file__))')/"; \
    fi \
    && /opt/snn-runner/venv/bin/python -P -c 'from snn_runner.sparse import library; p = library.library_path(); assert "site-packages" in str(p), p; library.load(); print("ops load from", p)'

# ---------------------------------------------------------------------------
FROM python-base AS runtime
# PATH puts the venv first so that `python3` is the one with snn-runner
# (`snn-runner submit --image` runs `apptainer exec IMAGE python3`).
# PYTHONNOUSERSITE keeps a bound $HOME/.local from shadowing the image's
# packages; no bytecode writes because the image is read-only at run time.
# SNN_RUNNER_INSTALLED makes ./run exec snn-runner instead of setting up.
ENV PATH=/opt/snn-runner/venv/bin:${PATH} \
    PYTHONNOUSERSITE=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    SNN_RUNNER_INSTALLED=1

COPY --from=build /opt/snn-runner/venv /opt/snn-runner/venv
COPY run /opt/snn-runner/run
COPY jobs/ /opt/snn-runner/jobs/
COPY scripts/ /opt/snn-runner/scripts/

# Results go to the working folder: bind one here (docker/podman), or, under
# Apptainer, the caller's current folder is used. World-writable with the
# sticky bit so any --user can write when nothing is bound.
RUN mkdir -m 1777 /work
WORKDIR /work

# Labels last: BUILD_DATE and GIT_REVISION change on every build and would
# otherwise invalidate the cached 2 GB venv layer below them.
ARG BASE_IMAGE
ARG TF_PACKAGE=tensorflow-cpu==2.21.0
ARG SNN_OPS_ARCH=x86-64-v3
ARG VERSION=dev
ARG GIT_REVISION=unknown
ARG BUILD_DATE=unknown
LABEL org.opencontainers.image.title="snn-runner" \
      org.opencontainers.image.description="Train and benchmark activity-sparse spiking neural networks (TensorFlow + compiled sparse ops)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${GIT_REVISION}" \
      org.opencontainers.image.created="${BUILD_DATE}" \
      org.opencontainers.image.base.name="${BASE_IMAGE}" \
      snn-runner.tensorflow="${TF_PACKAGE}" \
      snn-runner.ops-arch="${SNN_OPS_ARCH}"
# Result files record the revision they were made with; the image has no .git.
ENV SNN_RUNNER_GIT_REVISION=${GIT_REVISION}

# The same dispatch as %runscript in singularity.def: no argument = the main
# job; `./run ARGS` = the image's run script; a command on PATH (snn-runner,
# python3, bash, ...) runs as is; anything else goes to snn-runner.
ENTRYPOINT ["/bin/sh", "-c", "case \"${1-}\" in ./run|run) shift; exec /opt/snn-runner/run \"$@\";; ''|-*) exec /opt/snn-runner/run \"$@\";; esac; if command -v \"$1\" >/dev/null 2>&1; then exec \"$@\"; fi; exec /opt/snn-runner/run \"$@\"", "snn-runner-image"]
CMD []
