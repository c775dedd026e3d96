"""Who the workers of one data-parallel run are.

Two sources, one description: under Slurm the tasks of the step (through
``tf.distribute.cluster_resolver.SlurmClusterResolver``), and for
``snn-runner train --workers N`` a cluster of N local processes that the
launcher (``snn_runner.distribute.launch``) hands to each child in the
environment. Either way every worker gets a ``Workers`` and the same code
runs after that.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass

from snn_runner.config import COMMUNICATIONS

ENV = "SNN_RUNNER_WORKERS"  # the local launcher's cluster for a child: JSON of Workers' fields
PORT_RANGE = (20000, 60000)  # Slurm workers listen on ports from here (see slurm_port_base)


class ClusterError(RuntimeError):
    """The workers of a run cannot be set up (inconsistent Slurm allocation, unparsable launcher cluster)."""


@dataclass(frozen=True)
class Workers:
    rank: int
    hosts: tuple  # "host:port" of every worker, in rank order
    communication: str = "auto"
    slurm_step: str = ""  # JOB.STEP of the srun step the workers run in; "" when launched locally

    @property
    def world_size(self) -> int:
        return len(self.hosts)

    @property
    def is_chief(self) -> bool:
        # rank 0 writes the result and the checkpoints; every rank reads the checkpoint
        return self.rank == 0

    def host_of(self, rank: int) -> str:
        return self.hosts[rank].rsplit(":", 1)[0]

    def resolver(self):
        import tensorflow as tf

        spec = tf.train.ClusterSpec({"worker": list(self.hosts)})
        return tf.distribute.cluster_resolver.SimpleClusterResolver(
            spec, task_type="worker", task_id=self.rank, rpc_layer="grpc")

    def attrs(self) -> dict:
        """What the result file records about the run's workers."""
        return {"world_size": self.world_size, "worker_hosts": json.dumps(list(self.hosts)),
                "slurm_step_id": self.slurm_step, "communication": self.communication}

    def to_env(self) -> str:
        return json.dumps({"rank": self.rank, "hosts": list(self.hosts), "communication": self.communication})


def local_workers(count: int, communication: str = "auto") -> list[Workers]:
    """``count`` workers on this machine, each on a port free right now (the launcher starts them at once)."""
    ports, sockets = [], []
    for _ in range(count):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))  # kept open until all are chosen, so no two get the same port
        sockets.append(s)
        ports.append(s.getsockname()[1])
    for s in sockets:
        s.close()
    hosts = tuple(f"localhost:{p}" for p in ports)
    return [Workers(rank, hosts, communication) for rank in range(count)]


def slurm_port_base(job_id: str) -> int:
    """Ports of a job's workers start here: spread by job id, so two jobs on one node rarely meet.

    Each node's tasks take ``base + local task index``; 64 ports per job.
    """
    low, high = PORT_RANGE
    try:
        number = int(str(job_id).split("_")[0])
    except ValueError:
        number = 0
    return low + (number * 64) % (high - low - 64)


def slurm_workers(expected: int, communication: str = "auto") -> Workers:
    """This task's place among the tasks of the current srun step, which must number ``expected``."""
    from tensorflow.python.distribute.cluster_resolver.slurm_cluster_resolver import SlurmClusterResolver

    tasks = int(os.environ.get("SLURM_STEP_NUM_TASKS", os.environ.get("SLURM_NTASKS", "1")))
    if tasks != expected:
        raise ClusterError(f"Slurm started {tasks} task(s) but resources.nodes x resources.tasks_per_node is "
                           f"{expected}; submit the job with `snn-runner submit` so the allocation matches")
    job_id = os.environ.get("SLURM_JOB_ID", "0")
    # The resolver hands out one port per (GPU slot of a node); CPU workers are given one "slot" per task,
    # with auto_set_gpu off so it leaves CUDA_VISIBLE_DEVICES alone.
    resolver = SlurmClusterResolver(port_base=slurm_port_base(job_id), gpus_per_node=tasks, gpus_per_task=1,
                                    auto_set_gpu=False)
    hosts = tuple(resolver.cluster_spec().as_dict()["worker"])
    step = f"{job_id}.{os.environ.get('SLURM_STEP_ID', '0')}"
    return Workers(int(resolver.task_id), hosts, communication, step)


def workers_from_environment() -> Workers | None:
    """The Workers the local launcher gave this process, or None (an ordinary single-process run)."""
    text = os.environ.get(ENV)
    if not text:
        return None
    try:
        raw = json.loads(text)
        workers = Workers(int(raw["rank"]), tuple(str(h) for h in raw["hosts"]), str(raw.get("communication", "auto")))
    except (ValueError, KeyError, TypeError) as err:
        raise ClusterError(f"{ENV} is not a worker description ({err}); unset it to train in one process") from None
    if not 0 <= workers.rank < workers.world_size or workers.communication not in COMMUNICATIONS:
        raise ClusterError(f"{ENV}: rank {workers.rank} of {workers.world_size} workers, communication "
                           f"{workers.communication!r}; unset it to train in one process")
    return workers
