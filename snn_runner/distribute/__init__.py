"""Data-parallel training of one run over several processes (tf.distribute's MultiWorkerMirroredStrategy)."""

from snn_runner.distribute.cluster import Workers, local_workers, slurm_workers, workers_from_environment

__all__ = ["Workers", "local_workers", "slurm_workers", "workers_from_environment"]
