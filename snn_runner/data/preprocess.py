"""One recording's events -> (time bin, input id) per event.

Order of operations, per sample:

1. denoise (``denoise_ms`` > 0; camera datasets only): tonic's Denoise filter
   with filter_time = denoise_ms * 1000 us, computed by ``denoise.denoise``;
2. spatial downsampling (``downsample`` < 1): ``tonic.transforms.Downsample``
   (coordinates multiplied by the factor and truncated, so a sensor side of S
   pixels becomes ``floor((S - 1) * factor) + 1``; for SHD it merges channels);
3. binning: ``bin = floor((t - t0) / (dt_ms * 1000))`` with t in microseconds
   (tonic's unit for all three datasets), t0 = 0, except for DVS Gesture where
   t0 is the sample's first event; bins >= time_steps are dropped by time;
4. flattening to input ids:
   - camera datasets (N-MNIST, DVS Gesture): ``id = (p * H + y) * W + x`` with
     (W, H) the (downsampled) sensor size and p in {0, 1}, so
     ``channels = 2 * H * W`` (N-MNIST 2312, DVS Gesture 32768);
   - SHD: ``id = x`` (the cochlea channel), ``channels = 700`` (or fewer after
     downsampling).

De-duplication and the K_in cap happen afterwards in ``events.bin_sample``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from snn_runner.data.denoise import denoise
from snn_runner.data.errors import DataError
from snn_runner.data.tonic_sources import SourceSpec


@dataclass(frozen=True)
class Preprocessing:
    time_steps: int
    dt_ms: float = 1.0
    denoise_ms: float = 0.0
    downsample: float = 1.0


class SamplePreprocessor:
    """Callable: tonic events of one recording -> (bins, ids, events removed by denoise)."""

    def __init__(self, spec: SourceSpec, prep: Preprocessing):
        if prep.denoise_ms > 0 and spec.kind != "camera":
            raise DataError(f"denoise_ms applies to camera datasets (nmnist, dvsgesture): it filters by pixel "
                            f"neighbourhood, which {spec.name} does not have; set denoise_ms to 0")
        self.spec = spec
        self.prep = prep
        self._downsample = None
        if prep.downsample != 1.0:
            import tonic.transforms

            self._downsample = tonic.transforms.Downsample(spatial_factor=prep.downsample)
        self.width, self.height = self._downsampled_size()
        self.channels = 2 * self.width * self.height if spec.kind == "camera" else self.width
        dt_us = prep.dt_ms * 1000.0
        # Integer bins when the width is a whole number of microseconds: no float edge cases.
        self._dt_int = int(round(dt_us)) if abs(dt_us - round(dt_us)) < 1e-9 else 0
        self._dt_us = dt_us

    def _downsampled_size(self) -> tuple[int, int]:
        width, height, _ = self.spec.sensor
        if self._downsample is None:
            return width, height
        # The sensor's far corner through the very same transform gives the new extent.
        corner = np.zeros(1, np.dtype([("x", np.int64), ("y", np.int64), ("t", np.int64), ("p", np.int64)]))
        corner["x"], corner["y"] = width - 1, height - 1
        corner = self._downsample(corner)
        return int(corner["x"][0]) + 1, int(corner["y"][0]) + 1

    def __call__(self, events: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
        before = len(events)
        if self.prep.denoise_ms > 0:
            events = denoise(events, self.prep.denoise_ms * 1000.0)
        removed = before - len(events)
        if self._downsample is not None and len(events):
            events = self._downsample(events)
        t = events["t"].astype(np.int64)
        if not self.spec.clock_starts_at_zero and len(t):
            t = t - t.min()
        if self._dt_int:
            bins = np.floor_divide(t, self._dt_int)
        else:
            bins = np.floor(t / self._dt_us).astype(np.int64)
        x = events["x"].astype(np.int64)
        if self.spec.kind == "camera":
            ids = (events["p"].astype(np.int64) * self.height + events["y"].astype(np.int64)) * self.width + x
        else:
            ids = x
        return bins, ids, removed
