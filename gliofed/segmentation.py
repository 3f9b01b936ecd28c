"""How a segmentation comes out of the network: its output form, inference over a volume, and the clean-up after it.

* **Output form** (:data:`SEG_OUTPUTS`): ``"classes"`` (the seed's: softmax over background, necrotic core, oedema,
  enhancing tumour) or ``"regions"`` (sigmoid per nested region WT, TC, ET, as BraTS methods train them: the
  regions are what is scored, and each is learnt directly). :func:`seg_probabilities` and :func:`to_classes` turn
  either into the in-memory class map (0..3) every other part of gliofed reads.
* **Inference** (:class:`SegmentationInference`, :func:`predict_volume`): one pass over the whole preprocessed grid
  (the default), or MONAI's sliding-window inference with Gaussian weighting over windows of a chosen size, with
  optional test-time flips (the probabilities of the flipped volumes, flipped back, averaged).
* **Post-processing** (:func:`postprocess_mask`, :func:`choose_postprocessing`): tumour components smaller than a
  threshold removed, the threshold chosen on training cases (the candidate with the best mean region Dice).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from gliofed.errors import ConfigError
from gliofed.vocab import REGIONS

if TYPE_CHECKING:  # torch is imported where a tensor is made: predict's argument checks run before it loads
    import torch

__all__ = ["SEG_OUTPUTS", "seg_output_of", "region_targets", "seg_probabilities", "to_classes",
           "SegmentationInference", "predict_volume", "postprocess_mask", "POSTPROCESS_CANDIDATES",
           "choose_postprocessing", "PostprocessingChoice", "region_dice"]

#: the forms a segmentation head may output: one softmax over the four classes, or one sigmoid per region
SEG_OUTPUTS = ("classes", "regions")
#: the regions' channel order of a ``"regions"`` head (:data:`gliofed.vocab.REGIONS`' order: WT, TC, ET)
REGION_NAMES = tuple(REGIONS)


def seg_output_of(model) -> str:
    """The output form of a model (or of its ``config`` dict): ``"classes"`` unless it says ``"regions"``."""
    config = model if isinstance(model, Mapping) else getattr(getattr(model, "_orig_mod", model), "config", {})
    return str((config or {}).get("seg_output", "classes"))


def region_targets(seg: torch.Tensor) -> torch.Tensor:
    """Class maps (B, 1, D, H, W) with classes 0..3 -> float region masks (B, 3, D, H, W) in WT, TC, ET order."""
    import torch

    return torch.cat([torch.isin(seg, torch.tensor(REGIONS[r], device=seg.device)) for r in REGION_NAMES],
                     dim=1).float()


def seg_probabilities(logits: torch.Tensor, seg_output: str) -> torch.Tensor:
    """Softmax over the classes, or a sigmoid per region, of logits (B, K, D, H, W)."""
    import torch

    return torch.sigmoid(logits.float()) if seg_output == "regions" else torch.softmax(logits.float(), dim=1)


def to_classes(probabilities: torch.Tensor, seg_output: str, threshold: float = 0.5) -> torch.Tensor:
    """Class map (B, D, H, W), int64 0..3, from :func:`seg_probabilities`.

    Classes: the most probable class. Regions (BraTS's conversion, which keeps them nested): oedema where WT is above
    ``threshold``, necrotic core where TC is, enhancing tumour where ET is, each later one overriding the earlier.
    """
    import torch

    if seg_output != "regions":
        return probabilities.argmax(1)
    wt, tc, et = (probabilities[:, i] > threshold for i in range(3))
    classes = torch.zeros(wt.shape, dtype=torch.int64, device=probabilities.device)
    classes[wt] = 2
    classes[tc] = 1
    classes[et] = 3
    return classes


# ------------------------------------------------------------------------------------------------- inference
@dataclass(frozen=True)
class SegmentationInference:
    """How a volume is segmented.

    Attributes:
        window: sliding-window size (D, H, W) in voxels of the preprocessed grid, ``-1`` (or a side at least the
            volume's) meaning the whole axis; ``None`` (default): one pass over the whole volume.
        overlap: fraction by which neighbouring windows overlap (default 0.5, nnU-Net's).
        blend: how overlapping windows are weighted (default ``"gaussian"``: the centre of a window counts most;
            ``"constant"``: plain average).
        flips: test-time augmentation: axes of (D, H, W) = (0, 1, 2) whose flipped volumes are predicted too (every
            combination of them, nnU-Net's mirroring), flipped back and averaged (default none; ``(2,)``: left-right).
    """

    window: tuple[int, int, int] | None = None
    overlap: float = 0.5
    blend: str = "gaussian"
    flips: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.window is not None:
            window = tuple(int(v) for v in self.window)
            if len(window) != 3 or any(v == 0 or v < -1 for v in window):
                raise ConfigError(f"sliding window {list(self.window)} is not three sides (D, H, W), each a positive "
                                  "number of voxels or -1 (the whole axis).")
            object.__setattr__(self, "window", window)
        if not 0 <= self.overlap < 1:
            raise ConfigError(f"sliding-window overlap {self.overlap} is not in [0, 1).")
        if self.blend not in ("gaussian", "constant"):
            raise ConfigError(f"sliding-window blend {self.blend!r} is not 'gaussian' or 'constant'.")
        flips = tuple(sorted({int(a) for a in self.flips}))
        if any(a not in (0, 1, 2) for a in flips):
            raise ConfigError(f"test-time flips {list(self.flips)} are not axes of (D, H, W) = 0, 1, 2.")
        object.__setattr__(self, "flips", flips)

    def to_dict(self) -> dict:
        values = dataclasses.asdict(self)
        values["window"] = None if self.window is None else list(self.window)
        values["flips"] = list(self.flips)
        return values

    @classmethod
    def from_dict(cls, values: Mapping | None) -> SegmentationInference:
        return cls(**{k: v for k, v in (values or {}).items() if k in {f.name for f in dataclasses.fields(cls)}})


def _flip_sets(axes: Sequence[int]) -> list[tuple[int, ...]]:
    return [combo for n in range(len(axes) + 1) for combo in itertools.combinations(axes, n)]


def predict_volume(model: torch.nn.Module, image: torch.Tensor, inference: SegmentationInference | None = None,
                   seg_output: str | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Segment a batch of volumes and read the marker heads.

    Args:
        model: a :class:`~gliofed.model.MultiTaskUNet` (any model returning ``seg`` and marker logits), in eval mode.
        image: (B, C, D, H, W) on the model's device.
        inference: :class:`SegmentationInference` (default: one pass over the whole volume).
        seg_output: the head's output form (default: the model's, :func:`seg_output_of`).

    Returns:
        (segmentation probabilities (B, K, D, H, W) float32 — softmax over classes or sigmoid per region —, the
        whole-volume outputs of the model: ``seg`` logits and every marker head's logits). The marker heads read
        the whole volume (their global pooling needs it), whatever the window.
    """
    from monai.inferers import sliding_window_inference

    inference = inference or SegmentationInference()
    seg_output = seg_output or seg_output_of(model)
    outputs = model(image)

    def probabilities(x: torch.Tensor) -> torch.Tensor:
        if inference.window is None:
            return seg_probabilities(model(x)["seg"], seg_output)
        return sliding_window_inference(x, list(inference.window), 1,
                                        lambda patch: seg_probabilities(model(patch)["seg"], seg_output),
                                        overlap=inference.overlap, mode=inference.blend)

    if inference.window is None and not inference.flips:
        return seg_probabilities(outputs["seg"], seg_output), outputs
    total = None
    sets = _flip_sets(inference.flips)
    for axes in sets:
        dims = [a + 2 for a in axes]
        flipped = image.flip(dims) if dims else image
        p = probabilities(flipped)
        p = p.flip(dims) if dims else p
        total = p if total is None else total + p
    return total / len(sets), outputs


# --------------------------------------------------------------------------------------------- post-processing
def postprocess_mask(labels: np.ndarray, min_voxels: int = 0, keep_largest: bool = False) -> np.ndarray:
    """BraTS-style clean-up of a predicted class map: connected components of the whole tumour (any non-zero class,
    26-connectivity) smaller than ``min_voxels`` are set to background; with ``keep_largest`` only the largest
    component stays. Off (returns a copy) when ``min_voxels <= 0`` and not ``keep_largest``.

    Args:
        labels: integer class map (any shape, usually (D, H, W)).
        min_voxels: smallest component kept.
        keep_largest: keep only the largest component.

    Returns:
        the cleaned class map (same dtype).
    """
    from scipy import ndimage

    labels = np.array(labels, copy=True)
    if min_voxels <= 0 and not keep_largest:
        return labels
    components, count = ndimage.label(labels > 0, structure=np.ones((3,) * labels.ndim))
    if count == 0:
        return labels
    sizes = np.bincount(components.ravel())[1:]
    keep = sizes >= max(min_voxels, 1)
    if keep_largest:
        keep = np.zeros_like(keep)
        keep[int(np.argmax(sizes))] = True
    labels[~np.concatenate([[True], keep])[components]] = 0
    return labels


#: component sizes (voxels of the preprocessed grid) :func:`choose_postprocessing` tries by default
POSTPROCESS_CANDIDATES = (0, 4, 8, 16, 32, 64, 128, 256)


def region_dice(predicted: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Dice of each region (WT, TC, ET) of two class maps; 1 where both are empty (BraTS's convention)."""
    scores = {}
    for region, classes in REGIONS.items():
        p, t = np.isin(predicted, classes), np.isin(truth, classes)
        total = int(p.sum()) + int(t.sum())
        scores[region] = 1.0 if total == 0 else 2.0 * int((p & t).sum()) / total
    return scores


class PostprocessingChoice:
    """:func:`choose_postprocessing` one case at a time: :meth:`add` each training case's (predicted, true) class
    maps as they are predicted (nothing is kept but one running sum per option), then :meth:`result`.

    Args:
        candidates: smallest component sizes to try, in voxels (default :data:`POSTPROCESS_CANDIDATES`).
    """

    def __init__(self, candidates: Sequence[int] = POSTPROCESS_CANDIDATES):
        self.options = [(int(c), False) for c in sorted(set(candidates))] + [(0, True)]
        self.sums = np.zeros(len(self.options))
        self.n = 0

    def add(self, predicted: np.ndarray, truth: np.ndarray) -> None:
        """Score every option on one case: its predicted and true class maps, in the preprocessed grid."""
        self.n += 1
        for i, (min_voxels, largest) in enumerate(self.options):
            cleaned = postprocess_mask(predicted, min_voxels, largest)
            self.sums[i] += float(np.mean(list(region_dice(cleaned, truth).values())))

    def result(self) -> dict:
        """The choice over the cases added so far (see :func:`choose_postprocessing`)."""
        n = self.n
        scores = [{"min_voxels": m, "keep_largest": k, "dice": float(s / n) if n else float("nan")}
                  for (m, k), s in zip(self.options, self.sums)]
        best = int(np.argmax(self.sums)) if n else 0
        return {"min_voxels": self.options[best][0], "keep_largest": self.options[best][1], "scores": scores,
                "cases": n}


def choose_postprocessing(cases: Iterable[tuple[np.ndarray, np.ndarray]],
                          candidates: Sequence[int] = POSTPROCESS_CANDIDATES) -> dict:
    """Choose the post-processing on training cases: every candidate smallest component (and keeping only the largest
    component) is applied to each case's predicted class map, and the one with the highest mean Dice over the
    cases and the regions WT, TC and ET wins (ties: the gentlest, in the order tried; 0 = off is tried first).

    Args:
        cases: (predicted class map, true class map) pairs of training cases, in the preprocessed grid.
        candidates: smallest component sizes to try, in voxels (default :data:`POSTPROCESS_CANDIDATES`).

    Returns:
        ``{"min_voxels": int, "keep_largest": bool, "scores": [{"min_voxels", "keep_largest", "dice"} ...],
        "cases": n}``; off (``min_voxels`` 0) when there is no case.
    """
    choice = PostprocessingChoice(candidates)
    for predicted, truth in cases:
        choice.add(predicted, truth)
    return choice.result()
