"""snn-runner: train and benchmark activity-sparse spiking neural networks."""

__version__ = "0.1.0"
