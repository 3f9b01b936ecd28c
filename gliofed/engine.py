"""Train / predict loops shared by every training strategy (centralized, local, FedAvg, FedProx, distillation).

AMP (bf16 autocast on CUDA), channels_last_3d, optional ``torch.compile``, seeded determinism, progress
bars, checkpoints; the CPU path is what the tests run.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from monai.data import DataLoader as MonaiDataLoader
from monai.utils import set_determinism
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from gliofed.config import TrainConfig
from gliofed.data.dataset import collate_cases
from gliofed.errors import ConfigError
from gliofed.losses import MultiTaskLoss
from gliofed.metrics import region_scores
from gliofed.segmentation import (
    POSTPROCESS_CANDIDATES,
    SegmentationInference,
    choose_postprocessing,
    predict_volume,
    seg_output_of,
    to_classes,
)
from gliofed.vocab import MARKER_CLASSES, MARKERS, REGIONS

__all__ = [
    "resolve_device",
    "make_optimizer",
    "make_loader",
    "train_epoch",
    "prepare_model",
    "fit",
    "fit_private",
    "predict",
    "seed_everything",
    "scheduled_lr",
    "set_lr",
    "postprocessing_for",
]


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (MONAI's ``set_determinism``) and prefer deterministic kernels."""
    set_determinism(seed=seed)


def resolve_device(name: str = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; anything else is passed to ``torch.device``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} was requested but CUDA is not available on this machine.")
    return device


def scheduled_lr(config: TrainConfig, epoch: int, epochs: int) -> float:
    """The learning rate of epoch ``epoch`` (0-based) of a run of ``epochs`` under ``config.lr_schedule``:
    constant ``config.lr``; ``"poly"``: ``lr * (1 - epoch / epochs) ** 0.9`` (nnU-Net); ``"cosine"``:
    ``lr * (1 + cos(pi * epoch / epochs)) / 2``. Epochs at or past the end keep the last epoch's rate.

    >>> round(scheduled_lr(TrainConfig(lr=0.01, lr_schedule="poly"), 5, 10), 5)
    0.00536
    """
    if config.lr_schedule == "constant" or epochs <= 1:
        return config.lr
    progress = min(max(epoch, 0), epochs - 1) / epochs
    if config.lr_schedule == "poly":
        return config.lr * (1 - progress) ** 0.9
    return config.lr * (1 + math.cos(math.pi * progress)) / 2


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every parameter group's learning rate."""
    for group in optimizer.param_groups:
        group["lr"] = lr


def make_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                               weight_decay=config.weight_decay)
    return torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool, seed: int = 0, num_workers: int = 0) -> DataLoader:
    """MONAI's DataLoader with its padding collate (cases differ in depth) and a seeded shuffle.

    MONAI's loader re-seeds the dataset's random transforms (the augmentation) from ``seed``: in each worker
    process from that worker's own seed, so ``num_workers > 0`` gives different augmentations in different workers
    (a plain torch DataLoader copies one random state into every worker and repeats them) and the same ``seed``
    reproduces them.
    """
    generator = torch.Generator().manual_seed(seed)
    return MonaiDataLoader(dataset, batch_size=batch_size, shuffle=shuffle, collate_fn=collate_cases,
                           num_workers=num_workers, generator=generator, persistent_workers=False,
                           pin_memory=torch.cuda.is_available())


def _to_device(batch: dict, device: torch.device, channels_last: bool) -> tuple[torch.Tensor, ...]:
    image = batch["image"].to(device, non_blocking=True)
    if channels_last:
        image = image.contiguous(memory_format=torch.channels_last_3d)
    return (image, batch["seg"].to(device, non_blocking=True).long(),
            torch.as_tensor(batch["has_mask"]).to(device).bool(), batch["labels"].to(device))


def _autocast(device: torch.device, amp: bool):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp and device.type == "cuda")


def train_epoch(model: torch.nn.Module, loader: DataLoader, loss_fn: MultiTaskLoss, optimizer: torch.optim.Optimizer,
                device: torch.device, amp: bool = True, channels_last: bool = False,
                extra_loss: Callable[[torch.nn.Module], torch.Tensor] | None = None, desc: str = "train",
                progress: bool = True) -> dict[str, float]:
    """One pass over ``loader``; returns the mean of each loss part (and ``total``).

    ``extra_loss(model)`` is added to every step's loss (FedProx's proximal term uses it).
    """
    model.train()
    sums: dict[str, float] = {}
    steps = 0
    for batch in tqdm(loader, desc=desc, leave=False, disable=not progress):
        image, seg, has_mask, labels = _to_device(batch, device, channels_last)
        with _autocast(device, amp):
            outputs = model(image)
        total, parts = loss_fn(outputs, seg, has_mask, labels)
        if extra_loss is not None:
            prox = extra_loss(model)
            total = total + prox
            parts["extra"] = float(prox.detach())
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        parts["total"] = float(total.detach())
        for key, value in parts.items():
            sums[key] = sums.get(key, 0.0) + value
        steps += 1
    return {key: value / max(steps, 1) for key, value in sums.items()}


def prepare_model(model: torch.nn.Module, config: TrainConfig, device: torch.device) -> torch.nn.Module:
    """Move to ``device``; channels_last_3d and ``torch.compile`` where configured (CUDA only for the former)."""
    model = model.to(device)
    if config.channels_last and device.type == "cuda":
        model = model.to(memory_format=torch.channels_last_3d)
    if config.compile:
        model = torch.compile(model)
    return model


def fit(model: torch.nn.Module, train_set: Dataset, config: TrainConfig, epochs: int | None = None,
        optimizer: torch.optim.Optimizer | None = None, extra_loss=None, start_epoch: int = 0,
        on_epoch_end: Callable[[int, dict], None] | None = None, progress: bool = True,
        desc: str = "epoch", dp=None, schedule: tuple[int, int] | None = None) -> list[dict]:
    """Train ``model`` in place for ``epochs`` (default ``config.epochs``); return per-epoch loss dicts.

    The data order of epoch ``e`` is seeded by ``(config.seed, e)``, so resuming at ``start_epoch``
    reproduces an uninterrupted run. The learning rate follows ``config.lr_schedule`` (:func:`scheduled_lr`):
    ``schedule`` = (epochs of the run already trained, epochs of the whole run) places these epochs in it (a
    federated site trains a few epochs per round); default ``(start_epoch, start_epoch + epochs)``.

    ``dp``: a :class:`~gliofed.dp.DPSettings` with ``mechanism="dp_sgd"`` trains by DP-SGD instead
    (:func:`fit_private`); each epoch's dict then also holds ``dp_steps``, ``dp_sample_rate`` and
    ``dp_noise_multiplier`` (what an accountant needs) and ``epsilon`` at ``dp.delta`` for this call's steps.
    """
    if dp is not None and getattr(dp, "mechanism", "off") == "dp_sgd":
        return fit_private(model, train_set, config, dp, epochs, optimizer, extra_loss, start_epoch, on_epoch_end,
                           progress, desc, schedule)
    device = resolve_device(config.device)
    trained = prepare_model(model, config, device)  # same parameters; channels-last / compiled where configured
    optimizer = optimizer or make_optimizer(model, config)
    loss_fn = MultiTaskLoss(config.task_weights, config.class_weights, config.focal_gamma, seg_output_of(model))
    channels_last = config.channels_last and device.type == "cuda"
    history = []
    total_epochs = config.epochs if epochs is None else epochs
    epochs_bar = tqdm(range(start_epoch, start_epoch + total_epochs), desc=desc,
                      disable=not progress or total_epochs < 2)
    done, horizon = schedule if schedule is not None else (start_epoch, start_epoch + total_epochs)
    for epoch in epochs_bar:
        set_lr(optimizer, scheduled_lr(config, done + epoch - start_epoch, horizon))
        loader = make_loader(train_set, config.batch_size, shuffle=True, seed=config.seed * 100_003 + epoch,
                             num_workers=config.num_workers)
        losses = train_epoch(trained, loader, loss_fn, optimizer, device, config.amp, channels_last, extra_loss,
                             desc=f"{desc} {epoch + 1}", progress=progress)
        losses["epoch"] = epoch + 1
        history.append(losses)
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, losses)
    return history


def fit_private(model: torch.nn.Module, train_set: Dataset, config: TrainConfig, dp, epochs: int | None = None,
                optimizer: torch.optim.Optimizer | None = None, extra_loss=None, start_epoch: int = 0,
                on_epoch_end: Callable[[int, dict], None] | None = None, progress: bool = True,
                desc: str = "epoch", schedule: tuple[int, int] | None = None) -> list[dict]:
    """DP-SGD (:class:`gliofed.dp.DPSGD`): each step takes every case with probability batch_size / N (Poisson
    sampling), computes each sampled case's loss and gradient alone (no padding or normalisation shared between
    cases), clips it to ``dp.max_norm``, adds Gaussian noise of standard deviation ``dp.noise_multiplier *
    dp.max_norm`` to the sum and steps the optimiser; an epoch is round(N / batch_size) steps. ``extra_loss``
    (FedProx) depends on no case: its gradient is added after the noise. The model needs GroupNorm
    (``norm="group"``); AMP, channels-last and compile are not used. The learning rate follows
    ``config.lr_schedule`` as in :func:`fit` (``schedule``).

    Returns:
        per-epoch dicts: mean loss parts over the cases seen (``total`` ...), ``epoch``, ``dp_steps``,
        ``dp_sample_rate``, ``dp_noise_multiplier``, ``epsilon`` (this call's steps so far, at ``dp.delta``).
    """
    from gliofed.dp import DPSGD

    device = resolve_device(config.device)
    model = model.to(device)
    optimizer = optimizer or make_optimizer(model, config)
    loss_fn = MultiTaskLoss(config.task_weights, config.class_weights, config.focal_gamma, seg_output_of(model))
    total_epochs = config.epochs if epochs is None else epochs
    done, horizon = schedule if schedule is not None else (start_epoch, start_epoch + total_epochs)
    private = DPSGD(model, optimizer, len(train_set), config.batch_size, dp.noise_multiplier, dp.max_norm,
                    seed=config.seed * 100_003 + start_epoch)
    params = private.params

    def case_loss(index: int, sums: dict) -> Callable[[], torch.Tensor]:
        def compute() -> torch.Tensor:
            batch = collate_cases([train_set[index]])
            image, seg, has_mask, labels = _to_device(batch, device, channels_last=False)
            total, parts = loss_fn(model(image), seg, has_mask, labels)
            for key, value in {**parts, "total": float(total.detach())}.items():
                sums[key] = sums.get(key, 0.0) + value
            sums["cases"] = sums.get("cases", 0) + 1
            return total
        return compute

    def proximal() -> list[torch.Tensor]:
        return list(torch.autograd.grad(extra_loss(model), params, allow_unused=True))

    history = []
    for epoch in tqdm(range(start_epoch, start_epoch + total_epochs), desc=desc,
                      disable=not progress or total_epochs < 2):
        model.train()
        set_lr(optimizer, scheduled_lr(config, done + epoch - start_epoch, horizon))
        sums: dict = {}
        for _ in range(private.steps_per_epoch):
            chosen = private.sample()
            private.step([case_loss(i, sums) for i in chosen], proximal if extra_loss is not None else None)
        cases = max(sums.pop("cases", 0), 1)
        losses = {key: value / cases for key, value in sums.items()}
        losses.update(epoch=epoch + 1, dp_steps=private.steps_per_epoch, dp_sample_rate=private.sample_rate,
                      dp_noise_multiplier=private.noise_multiplier, epsilon=private.accountant.epsilon(dp.delta))
        history.append(losses)
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, losses)
    return history


@torch.no_grad()
def predict(model: torch.nn.Module, dataset: Dataset, device: str | torch.device = "auto", amp: bool = True,
            save_masks: str | Path | None = None, progress: bool = True, hd95: bool = True,
            postprocess: Callable[[np.ndarray], np.ndarray] | None = None,
            inference: SegmentationInference | None = None) -> pd.DataFrame:
    """Run ``model`` on every case (batch size 1, no padding) and score it.

    Returns one row per case: ``subject``, ``site``, the true labels (-1 unknown), ``p_<marker>_<k>``
    class probabilities, ``has_mask`` and per-region ``dice_WT/TC/ET`` and ``hd95_WT/TC/ET`` (NaN when the case
    has no mask) with ``hd95_unit``: ``mm`` when the sample carries its voxel ``spacing`` (the cache records it),
    else ``voxels``. With ``save_masks`` the predicted class maps are written there as ``<subject>.pred.npy``
    (uint8, (D, H, W)). ``hd95=False`` skips the (slower) Hausdorff distances: NaN. ``postprocess`` (a function of
    the (D, H, W) class map, e.g. :func:`gliofed.inference.postprocess_mask`) adds the same scores of the
    post-processed map as ``pp_dice_*`` / ``pp_hd95_*``; the raw scores stay as they are. ``inference`` chooses
    how the volume is segmented (:class:`~gliofed.segmentation.SegmentationInference`: default one whole-volume pass;
    sliding windows, test-time flips).
    """
    device = resolve_device(device) if isinstance(device, str) else device
    model.eval().to(device)
    rows = []
    if save_masks is not None:
        Path(save_masks).mkdir(parents=True, exist_ok=True)
    loader = make_loader(dataset, batch_size=1, shuffle=False)
    for batch in tqdm(loader, desc="predict", leave=False, disable=not progress):
        image, seg, has_mask, labels = _to_device(batch, device, channels_last=False)
        with _autocast(device, amp):
            probabilities, outputs = predict_volume(model, image, inference)
        row = {"subject": batch["subject"][0], "site": batch["site"][0], "has_mask": bool(has_mask[0])}
        for i, marker in enumerate(MARKERS):
            row[marker] = int(labels[0, i])
            probs = torch.softmax(outputs[marker].float(), dim=1)[0].cpu().numpy()
            for k in range(len(MARKER_CLASSES[marker])):
                row[f"p_{marker}_{k}"] = float(probs[k])
        predicted = to_classes(probabilities, seg_output_of(model))[:, None]
        spacing = batch.get("spacing")
        spacing = None if spacing is None else [float(v) for v in torch.as_tensor(spacing).reshape(-1)[:3]]
        row["hd95_unit"] = "mm" if spacing is not None else "voxels"
        cleaned = None
        if postprocess is not None:
            cleaned = torch.as_tensor(postprocess(predicted[0, 0].cpu().numpy()), device=predicted.device)[None, None]
        for prefix, mask in (("", predicted), ("pp_", cleaned)):
            if mask is None:
                continue
            if row["has_mask"]:
                scores = region_scores(mask, seg, hd95=hd95, spacing=spacing)
            else:
                scores = {f"{m}_{r}": float("nan") for r in REGIONS for m in ("dice", "hd95")}
            row.update({prefix + k: v for k, v in scores.items()})
        if save_masks is not None:
            np.save(Path(save_masks) / f"{row['subject']}.pred.npy", predicted[0, 0].to(torch.uint8).cpu().numpy())
        rows.append(row)
    return pd.DataFrame(rows)


@torch.no_grad()
def postprocessing_for(model: torch.nn.Module, dataset: Dataset, device: str | torch.device = "auto",
                       inference: SegmentationInference | None = None,
                       candidates=POSTPROCESS_CANDIDATES, progress: bool = False) -> dict:
    """Choose the post-processing of ``model`` on ``dataset`` (its training cases): each case with a mask is predicted
    once and :func:`~gliofed.segmentation.choose_postprocessing` tries every candidate on it.

    Returns:
        ``{"min_voxels", "keep_largest", "scores", "cases"}`` (see :func:`~gliofed.segmentation.choose_postprocessing`).
    """
    device = resolve_device(device) if isinstance(device, str) else device
    model.eval().to(device)
    seg_output = seg_output_of(model)

    def cases():
        loader = make_loader(dataset, batch_size=1, shuffle=False)
        for batch in tqdm(loader, desc="post-processing", leave=False, disable=not progress):
            if not bool(torch.as_tensor(batch["has_mask"])[0]):
                continue
            image, seg, _, _ = _to_device(batch, device, channels_last=False)
            probabilities, _ = predict_volume(model, image, inference, seg_output)
            yield to_classes(probabilities, seg_output)[0].cpu().numpy(), seg[0, 0].cpu().numpy()

    return choose_postprocessing(cases(), candidates)
