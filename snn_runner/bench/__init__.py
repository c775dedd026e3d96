"""Speed benchmarks: dense vs sparse_ops vs sparse_layer, side by side."""
