"""Where snn-runner keeps what it writes, and how a file gets there whole.

The lowest layer of the package: it imports nothing else of snn_runner, so
every other layer (data cache, runner checkpoints, results, Slurm records)
can use it.
"""

from snn_runner.files.atomic import (TMP_SUFFIX, DiskFullError, WriteError, atomic_h5, atomic_text, atomic_write,
                                    remove_dead_temporaries, stale_temporaries, write_bytes)
from snn_runner.files.layout import OutputLayout, checkpoint_for

__all__ = ["TMP_SUFFIX", "DiskFullError", "OutputLayout", "WriteError", "checkpoint_for", "atomic_h5", "atomic_text",
           "atomic_write", "remove_dead_temporaries", "stale_temporaries", "write_bytes"]
