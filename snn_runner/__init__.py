"""snn-runner: train and benchmark activity-sparse spiking neural networks.

Importing the package quiets TensorFlow's C++ start-up chatter in every
process the tool starts (the CLI, spawned benchmark processes and Slurm tasks
all import ``snn_runner`` before TensorFlow); see ``snn_runner.console``.
"""

from snn_runner import console

__version__ = "0.1.0"

if not console.verbose():
    console.quiet()
