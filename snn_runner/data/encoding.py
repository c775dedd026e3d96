"""What input id k means: the encoding a trained network expects its inputs in.

Stored with every trained network, so a reader (``evaluate``, a NIR
consumer, a person) can turn events of a sensor into the ids the network
was trained on, or knows that they are synthetic.
"""

from __future__ import annotations

from snn_runner.config import DataConfig


def input_encoding(cfg: DataConfig, channels: int) -> dict:
    """A JSON-ready description of the inputs of a run on ``cfg`` with ``channels`` input ids."""
    enc = {"dataset": cfg.dataset, "channels": int(channels), "time_steps": cfg.time_steps, "dt_ms": cfg.dt_ms}
    if cfg.dataset == "randman":
        enc["id_formula"] = "id = randman channel (one spike per channel and sample, Zenke & Vogels 2021)"
        return enc
    if cfg.dataset == "random":
        enc["id_formula"] = "id = uniform random channel (benchmark input, no meaning)"
        return enc
    from snn_runner.data.preprocess import Preprocessing, SamplePreprocessor
    from snn_runner.data.tonic_sources import SOURCES

    spec = SOURCES[cfg.dataset]
    prep = SamplePreprocessor(spec, Preprocessing(cfg.time_steps, cfg.dt_ms, 0.0, cfg.downsample))
    enc.update(sensor_size=list(spec.sensor), downsample=cfg.downsample,
               denoise_ms=cfg.denoise_ms, bin_formula=(
                   "bin = floor((t - t0) / (dt_ms * 1000)), t in microseconds, t0 = "
                   + ("0" if spec.clock_starts_at_zero else "the sample's first event")))
    if spec.kind == "camera":
        enc["id_formula"] = f"id = (p * H + y) * W + x with W = {prep.width}, H = {prep.height} (after downsampling)"
    else:
        enc["id_formula"] = f"id = x (channel), {prep.width} channels after downsampling"
    return enc
