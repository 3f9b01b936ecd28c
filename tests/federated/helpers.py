"""Small shared builders for the federation tests."""

from gliofed.config import TrainConfig
from gliofed.federated.protocol import site_request
from gliofed.model import MultiTaskUNet

SMALL_MODEL = {"features": (4, 8, 16, 32), "hidden": 8}


def small_config(**changes) -> TrainConfig:
    values = dict(model=SMALL_MODEL, batch_size=3, optimizer="adamw", lr=1e-2, augment=False, device="cpu")
    values.update(changes)
    return TrainConfig(**values)


def small_model() -> MultiTaskUNet:
    return MultiTaskUNet(**SMALL_MODEL)


def site_settings(model, seed=1, **extra) -> dict:
    """The settings of a server's request (as :func:`gliofed.federated.protocol.site_request` builds them)."""
    return site_request(small_config(), model, seed, "train", None, extra)[2]
