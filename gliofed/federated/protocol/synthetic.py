"""How a distilled set's synthetic volumes, stored at low resolution, are read back at full size (both sides: the
site matches them at full size, the server trains on them)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["upsample_synthetic"]


def upsample_synthetic(images: torch.Tensor, masks: torch.Tensor, shape) -> tuple[torch.Tensor, torch.Tensor]:
    """Low-resolution synthetic volumes (N, C, d, h, w) and masks (N, d, h, w) -> full ``shape``:
    trilinear for images, nearest for masks (returned as (N, 1, D, H, W) int64)."""
    full = F.interpolate(images.float(), size=tuple(shape), mode="trilinear", align_corners=False)
    labels = F.interpolate(masks[:, None].float(), size=tuple(shape), mode="nearest").long()
    return full, labels
