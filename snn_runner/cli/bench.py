"""`snn-runner bench`: dense vs sparse implementations side by side."""

from __future__ import annotations

from pathlib import Path

import click

from snn_runner.cli import common
from snn_runner.cli.common import LayerSizes, job_arguments, log
from snn_runner.config import BENCH_NETWORKS, IMPLEMENTATIONS, BenchConfig


@click.command()
@job_arguments
@click.option("--network", type=click.Choice(sorted(BENCH_NETWORKS)), default="nmnist-base", show_default=True,
              help="Benchmark network preset (nmnist-base: [1156, 1470, 1460, 10], T=100, batch 48, "
                   "32 input events per step).")
@click.option("--implementation", "implementations", type=click.Choice(IMPLEMENTATIONS), multiple=True,
              help="Implementation to time; repeat for several  [default: all available]")
@click.option("--max-activity", "activities", type=click.FloatRange(min=0, max=1, min_open=True), multiple=True,
              help="Hidden capacity fraction; repeat for several  [default: 0.01 0.02 0.05 0.1]")
@click.option("--hidden", type=LayerSizes(), default=None,
              help="Hidden layer sizes replacing the preset's, comma separated (e.g. 4096,4096).")
@click.option("--time-steps", type=click.IntRange(min=2), default=None,
              help="Time steps per sample replacing the preset's (e.g. 500 for SHD- or DVS-like lengths).")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="Threads of the op pool every case runs with  [default: one per core]")
@click.option("--steps", type=click.IntRange(min=5), default=5, show_default=True,
              help="Timed training (and forward) steps per case; the median is reported.")
@click.option("--warmup", type=click.IntRange(min=0), default=1, show_default=True,
              help="Untimed steps after the first (compiling) step.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write one JSON record per (implementation, max_activity) to this file.")
@click.pass_context
def bench(ctx, job, task_spec, output_dir, network, implementations, activities, hidden, time_steps, threads, steps,
          warmup, json_path):
    """Time training steps of dense, sparse_ops and sparse_layer side by side.

    Each case runs in a fresh process (so peak memory is its own) within one
    invocation, and every speed-up is against the dense step measured in the
    same run. Compile time (the first step) is reported apart.

    With JOB (a bench job file): one HDF5 result file per task in the job's
    output folder, for `collect` and `report`.
    """
    from snn_runner.bench.suite import (
        format_table,
        run_suite,
        with_speedups,
        write_json,
    )
    from snn_runner.sparse import library

    if job is not None:
        common.reject_options_with_job(ctx, job, keep=("json_path",))
        job = common.load_job_or_fail(job)
        if job.kind != "bench":
            raise click.UsageError(f"{job.path} is a {job.kind} job; run it with `snn-runner {job.kind}`")
        from snn_runner.dispatch import run_bench_tasks

        tasks = common.select_tasks(job, task_spec)
        log(f"job {job.name}: {len(tasks)} bench task(s) on {job.bench.network}")
        try:
            with common.runtime_errors():
                records = with_speedups(run_bench_tasks(job, tasks, output_dir, log=log))
        except RuntimeError as err:
            raise click.ClickException(str(err)) from None
        if records:
            log("")
            log(format_table(records))
        if json_path:
            write_json(records, json_path)
            log(f"json: {json_path}")
        return
    if task_spec is not None or output_dir is not None:
        raise click.UsageError("--task and --output-dir need a JOB file")

    implementations = list(implementations) or (
        list(IMPLEMENTATIONS) if library.available() else ["dense"])
    if not library.available() and any(i != "dense" for i in implementations):
        raise click.ClickException(f"the sparse implementations need the compiled ops at {library.library_path()}; "
                                   "build them with scripts/build-ops (./run does it on first use)")
    activities = list(activities) or [0.01, 0.02, 0.05, 0.1]
    from snn_runner.bench.suite import case_config
    from snn_runner.runner.budget import ResourceError, check_memory

    spec = BenchConfig(network, hidden=tuple(hidden) if hidden else (0,), steps=steps, warmup=warmup,
                       time_steps=time_steps or 0, threads=threads or 0).validate()
    with common.runtime_errors():
        for impl in list(implementations):  # a case that cannot fit is refused before any is timed
            try:
                check_memory(case_config(spec, impl, activities[0]))
            except ResourceError as err:
                if impl != "dense" or len(implementations) == 1:
                    raise
                # the sparse cases are what a too-wide network is benchmarked for; dense is left out, said why
                log(f"dense left out: {err}")
                implementations.remove(impl)
    try:
        records = run_suite(spec, implementations, activities, log)
    except RuntimeError as err:
        raise click.ClickException(str(err)) from None
    log("")
    log(format_table(records))
    if json_path:
        write_json(records, json_path)
        log(f"json: {json_path}")
