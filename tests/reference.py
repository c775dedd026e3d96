"""Independent NumPy reference of the network equations (the model section of the README).

Written step by step, as literally as possible, to check the TensorFlow
implementations against.
"""

import numpy as np


def surrogate(u, theta, beta):
    return 1.0 / (beta * np.abs(u - theta) + 1.0) ** 2


def lif_step(u, current, alpha, theta, c):
    spiked_before = (u >= theta).astype(np.float32)
    u = u - u * spiked_before
    u = alpha * u + (1.0 - alpha) * c * current
    return u, (u >= theta).astype(np.float32)


def network_forward(frames, weights, alpha, theta, c):
    """frames [B, T, n_in] 0/1; weights[l] is W^T [n_{l-1}, n_l].

    Returns logits [B, n_L] and spikes per layer [L][B, T, n_l].
    """
    b, t_steps, _ = frames.shape
    layers = len(weights)
    u = [np.zeros((b, w.shape[1]), np.float32) for w in weights]
    prev = [np.zeros((b, w.shape[1]), np.float32) for w in weights]
    record = [np.zeros((b, t_steps, w.shape[1]), np.float32) for w in weights]
    for t in range(t_steps):
        new = []
        for l in range(layers):
            pre = frames[:, t] if l == 0 else prev[l - 1]  # one-step delay for l > 0
            u[l], s = lif_step(u[l], pre @ weights[l], alpha, theta, c)
            new.append(s)
            record[l][:, t] = s
        prev = new
    return record[-1].sum(axis=1), record


def dense_frames(ids: np.ndarray, count: np.ndarray, channels: int) -> np.ndarray:
    """0/1 frames ``[N, T, channels]`` (uint8) holding exactly the ids below count."""
    n, t, k = ids.shape
    valid = (np.arange(k) < count[..., None]) & (ids >= 0)
    frames = np.zeros((n * t, channels), np.uint8)
    row = np.broadcast_to(np.arange(n * t).reshape(n, t, 1), ids.shape)
    frames[row[valid], ids[valid]] = 1
    return frames.reshape(n, t, channels)
