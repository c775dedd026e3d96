"""The strategy of a multi-worker run and the few collectives the trainer needs besides the gradients.

TensorFlow's MultiWorkerMirroredStrategy does the work: one replica per
worker process, variables mirrored on every worker (created from rank 0's
initial values), gradients summed by collective all-reduce. On the CPU the
collectives are ring all-reduces over gRPC between the workers
(``CommunicationImplementation.RING``; ``auto`` lets TensorFlow choose, which
on CPU-only workers is the same ring). A lost worker is noticed by
TensorFlow's coordination service when its heartbeats stop (about 10 s here);
the collectives of the others then fail with ``UnavailableError``, which
``worker_failure`` turns into one line naming the rank and host. A worker
that never joins is caught by ``make_strategy``'s watchdog.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys

from snn_runner.distribute.cluster import Workers

STARTUP_TIMEOUT_S = 180  # every worker must join within this, or the run stops (no wait until the time limit)
STARTUP_ENV = "SNN_RUNNER_WORKER_STARTUP_S"  # another bound, in seconds (slow shared file systems; the tests)


class WorkerLost(RuntimeError):
    """A worker of a multi-worker run died or cannot be reached; the checkpoint of the last epoch is intact."""


def startup_timeout() -> int:
    text = os.environ.get(STARTUP_ENV, "")
    return int(text) if text.isdigit() and int(text) > 0 else STARTUP_TIMEOUT_S


# The watchdog of make_strategy: a separate small process, because TensorFlow holds the interpreter
# lock while it waits for the cluster (no Python thread or signal handler runs then).
_WATCHDOG = """
import os, select, signal, sys
ready, _, _ = select.select([sys.stdin], [], [], float(sys.argv[1]))
if not ready:
    print(sys.argv[2], file=sys.stderr, flush=True)
    os.kill(int(sys.argv[3]), signal.SIGKILL)
"""


def make_strategy(workers: Workers):
    """The strategy of ``workers``; the process is ended with an ``Error:`` line when not all join in time.

    TensorFlow waits without a bound for the workers of its cluster to come up,
    inside its C++ context set-up where no exception can reach it, so a
    watchdog process kills this one after ``startup_timeout()`` seconds.
    Nothing has been written by then.
    """
    import tensorflow as tf

    implementation = {"auto": tf.distribute.experimental.CommunicationImplementation.AUTO,
                      "ring": tf.distribute.experimental.CommunicationImplementation.RING}[workers.communication]
    options = tf.distribute.experimental.CommunicationOptions(implementation=implementation)
    watchdog = subprocess.Popen([sys.executable, "-c", _WATCHDOG, str(startup_timeout()),
                                 f"Error: {_not_joined(workers)}", str(os.getpid())], stdin=subprocess.PIPE)
    try:
        return tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=workers.resolver(),
                                                         communication_options=options)
    finally:
        watchdog.stdin.close()  # (its select returns: the cluster is up, or this process is going anyway)
        watchdog.wait()


def _not_joined(workers: Workers) -> WorkerLost:
    return WorkerLost(f"not every one of the {workers.world_size} workers joined within {startup_timeout()} s "
                      f"(rank {workers.rank} on {workers.host_of(workers.rank)} waited); check the other tasks' "
                      "logs, then submit or run the command again")


class Collectives:
    """Agreement between the workers outside the train step: a stop flag, and a barrier.

    A signal reaches the workers at slightly different steps; each step they
    agree whether any of them was asked to stop, so all stop after the same
    step (a worker that stopped alone would leave the others waiting in the
    next all-reduce).
    """

    def __init__(self, strategy):
        import tensorflow as tf

        self.strategy = strategy

        def any_of(flag):
            ctx = tf.distribute.get_replica_context()
            # (identity: a value made on this replica's device, as all_reduce needs; there is no MAX)
            return ctx.all_reduce(tf.distribute.ReduceOp.SUM, tf.identity(flag))

        @tf.function(input_signature=[tf.TensorSpec([], tf.float32)])
        def agree(flag):
            return strategy.run(any_of, args=(flag,))

        self._agree = agree

    def any(self, flag: bool) -> bool:
        import tensorflow as tf

        return bool(self._agree(tf.constant(1.0 if flag else 0.0)).numpy() > 0)

    def barrier(self) -> None:
        self.any(False)


def worker_failure(err: Exception, workers: Workers, where: str) -> WorkerLost:
    """``err`` from a collective, as one line naming the lost worker."""
    text = str(err)
    # "... tasks are unhealthy (stopped sending heartbeats): /job:worker/replica:0/task:1", or a peer named alone
    tail = text.split("unhealthy", 1)[-1] if "unhealthy" in text else text.split("aborted by", 1)[-1]
    found = re.search(r"/job:worker/(?:replica:\d+/)?task:(\d+)", tail)
    lost = int(found.group(1)) if found else None
    if lost is not None and lost < workers.world_size and lost != workers.rank:
        who = f"worker rank {lost} on {workers.host_of(lost)}"
    else:
        who = "another worker"
    return WorkerLost(f"{who} stopped or cannot be reached ({where}, seen by rank {workers.rank} on "
                      f"{workers.host_of(workers.rank)}); the checkpoint of the last finished epoch is intact: "
                      "submit or run the same command again to resume")


@contextlib.contextmanager
def failures_named(workers: Workers):
    """Collective failures (a worker died, the network split, a worker never came up) as ``WorkerLost``."""
    import tensorflow as tf

    lost = (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.CancelledError,
            tf.errors.AbortedError, tf.errors.FailedPreconditionError)
    try:
        yield
    except lost as err:
        raise worker_failure(err, workers, "in a collective") from None
