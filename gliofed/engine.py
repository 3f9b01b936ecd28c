"""Train / predict loops shared by every training strategy (centralized, local, FedAvg, FedProx, distillation).

The data path feeds the model at its own speed: cases leave the cache in their stored types (fp16 image, uint8 mask),
travel pinned and non-blocking to the device, and are cast, augmented (seeded, :func:`augment_batch`) and laid out
channels-last there; workers persist across epochs and rounds (:class:`TrainBatches`), and where the whole training
set fits in GPU memory it stays there. On CUDA the model step runs in bf16 with channels_last_3d, ``torch.compile``
and a fused optimizer, on batches of one fixed depth. On the CPU the defaults keep the original path (augmentation
in the loader, padding per batch), so a seeded CPU run gives the same numbers as before; a seed reproduces a run on
the same device.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from monai.data import DataLoader as MonaiDataLoader
from monai.utils import set_determinism
from torch.utils.data import DataLoader, Dataset, Sampler, Subset
from tqdm.auto import tqdm

from gliofed.config import TrainConfig
from gliofed.data.dataset import CaseDataset, collate_cases, fixed_depth
from gliofed.data.transforms import augment_batch, augment_pipeline, draw_augmentation
from gliofed.errors import ConfigError, TrainingError
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
    "TrainBatches",
    "train_epoch",
    "refuse_non_finite_loss",
    "prepare_model",
    "fit",
    "fit_private",
    "predict",
    "seed_everything",
    "scheduled_lr",
    "set_lr",
    "postprocessing_for",
    "epoch_seed",
    "eval_batch_size",
]

#: share of the device's free memory a device-resident training cache may take when ``device_cache="auto"``
DEVICE_CACHE_SHARE = 0.5
#: batches each DataLoader worker prepares ahead
PREFETCH_BATCHES = 4


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (MONAI's ``set_determinism``) and prefer deterministic kernels."""
    set_determinism(seed=seed)


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of epoch ``epoch`` of a run seeded ``seed``: its data order (and on the device, its augmentation)
    depend on it alone, so a run resumed at that epoch sees the same data."""
    return seed * 100_003 + epoch


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
    """``config.optimizer`` over the model's parameters; fused (one kernel for all parameters) where they are on CUDA,
    the default implementation elsewhere (the CPU numbers stay as they were)."""
    on_cuda = any(p.is_cuda for p in model.parameters())
    options = [{"fused": True}, {"foreach": True}] if on_cuda else [{}]
    for extra in options:
        try:
            if config.optimizer == "sgd":
                return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                       weight_decay=config.weight_decay, **extra)
            return torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay, **extra)
        except (RuntimeError, TypeError, ValueError):  # an implementation this build or parameter type lacks
            if extra is options[-1]:
                raise
    raise AssertionError("unreachable")


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool, seed: int = 0, num_workers: int = 0,
                depth: int | None = None) -> DataLoader:
    """MONAI's DataLoader with the padding collate (cases differ in depth; ``depth`` fixes it) and a seeded shuffle.

    MONAI's loader re-seeds the dataset's random transforms (the augmentation) from ``seed``: in each worker
    process from that worker's own seed, so ``num_workers > 0`` gives different augmentations in different workers
    (a plain torch DataLoader copies one random state into every worker and repeats them) and the same ``seed``
    reproduces them.
    """
    generator = torch.Generator().manual_seed(seed)
    return MonaiDataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers,
                           collate_fn=partial(collate_cases, depth=depth), generator=generator,
                           persistent_workers=False, pin_memory=torch.cuda.is_available())


# ------------------------------------------------------------------------------------------------- data path
class _EpochSampler(Sampler[int]):
    """The shuffled order of an epoch (set with :meth:`set_epoch`) from ``epoch_seed(seed, epoch)``: the order of
    earlier gliofed versions (:func:`_epoch_order`), with the loader (and its workers) kept across epochs."""

    def __init__(self, n: int, workers: int = 0) -> None:
        self.n, self.workers, self.seed = n, workers, 0

    def set_epoch(self, seed: int) -> None:
        """Use the order of the epoch seeded ``seed`` (:func:`epoch_seed`) from now on."""
        self.seed = seed

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        return iter(_epoch_order(self.n, self.seed, self.workers).tolist())


def _epoch_order(n: int, seed: int, workers: int = 0) -> torch.Tensor:
    """The shuffled order of ``n`` cases in an epoch seeded ``seed``, as earlier gliofed versions drew it, so that
    seeded runs keep their numbers: their progress bar (``tqdm.auto``) opened one DataLoader iterator more per epoch
    and dropped it, so the loader's generator drew a base seed twice before the order (and, with workers, the dropped
    iterator's workers had already drawn a first permutation)."""
    generator = torch.Generator().manual_seed(seed)
    torch.empty((), dtype=torch.int64).random_(generator=generator)
    if workers:
        torch.randperm(n, generator=generator)
    torch.empty((), dtype=torch.int64).random_(generator=generator)
    return torch.randperm(n, generator=generator)


def _augment_generator(seed: int, epoch: int) -> torch.Generator:
    """The host generator of epoch ``epoch``'s device augmentation (a stream apart from the data order's)."""
    state = np.random.SeedSequence([int(seed), int(epoch), 0xA06]).generate_state(2, dtype=np.uint64)
    return torch.Generator().manual_seed(int(state[0] >> np.uint64(1)))


class _Augmented(Dataset):
    """A dataset whose samples pass through ``pipeline`` (for datasets that are not :class:`CaseDataset` views)."""

    def __init__(self, dataset: Dataset, pipeline) -> None:
        self.dataset, self.transform = dataset, pipeline

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict:
        return self.transform(self.dataset[i])


def _case_view(dataset: Dataset, make: Callable[[CaseDataset], Dataset]) -> Dataset | None:
    """``make`` applied to the :class:`CaseDataset` under ``dataset`` (itself or a Subset of it), or None."""
    if isinstance(dataset, CaseDataset):
        return make(dataset)
    if isinstance(dataset, Subset):
        inner = _case_view(dataset.dataset, make)
        return None if inner is None else Subset(inner, dataset.indices)
    return None


def _own_transform(dataset: CaseDataset):
    """A view's transform unless it is gliofed's training augmentation (which the engine applies itself)."""
    transform = dataset.transform
    return None if getattr(transform, "gliofed_augmentation", False) else transform


def _case_rows(dataset: Dataset) -> pd.DataFrame | None:
    """The cache index rows of the cases of ``dataset`` (a CaseDataset or a Subset of one), in order, or None."""
    if isinstance(dataset, CaseDataset):
        return dataset.index
    if isinstance(dataset, Subset):
        rows = _case_rows(dataset.dataset)
        return None if rows is None else rows.iloc[list(dataset.indices)]
    return None


def _base_case_dataset(dataset: Dataset) -> CaseDataset | None:
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    return dataset if isinstance(dataset, CaseDataset) else None


def _free_device_bytes(device: torch.device) -> int:
    free, _total = torch.cuda.mem_get_info(device)
    return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))


class TrainBatches:
    """Device-ready training batches of one dataset, epoch after epoch: keep one per site and it lives across
    rounds (its workers, its verified cases and its device-resident cache with it).

    How (from ``config``, resolved for ``device``):

    * **augmentation** (``config.augment``; where: ``config.augment_on``): ``"device"`` draws each batch's flips,
      scales and gammas on the host from a generator seeded by ``(config.seed, epoch)`` and applies them on the
      device (:func:`~gliofed.data.transforms.augment_batch`); ``"loader"`` runs MONAI's per-case pipeline in the
      loader (the CPU default: the numbers of earlier gliofed versions).
    * **types**: without loader augmentation, cases leave the cache as fp16 / uint8, are pinned and copied
      non-blocking, and cast (and made channels_last_3d on CUDA) on the device.
    * **shape**: ``config.pad_depth``: every batch padded (or centre-cropped) to one depth, or to its deepest case.
    * **where the cases wait**: ``config.device_cache``: all training cases on the device (indexed there each step),
      or a DataLoader whose ``config.num_workers`` workers persist across epochs and prefetch; before workers start,
      every case is verified once in this process (the workers inherit that).

    Args:
        dataset: the training cases: a :class:`~gliofed.data.dataset.CaseDataset`, a ``Subset`` of one, or any
            dataset of samples of that form (``image``, ``seg``, ``has_mask``, ``labels``).
        config: the training config (batch size, seed and the settings above).
        device: the training device.

    Each batch of :meth:`epoch` is a dict: ``image`` float32 (B, C, D, H, W) and ``seg`` int64 (B, 1, D, H, W) on
    ``device``; ``has_mask`` bool (B,) and ``labels`` int64 (B, 4) on the host (pinned on CUDA: the loss decides
    on them without waiting for the device); ``region`` (B, 3, 2), each case's own voxels in the padded batch.

    >>> batches = TrainBatches(CaseDataset("cache", split="train"), TrainConfig(device="cpu"),
    ...                        torch.device("cpu"))  # doctest: +SKIP
    >>> next(iter(batches.epoch(0)))["image"].dtype  # doctest: +SKIP
    torch.float32
    """

    def __init__(self, dataset: Dataset, config: TrainConfig, device: torch.device | str) -> None:
        self.dataset, self.config = dataset, config
        self.device = torch.device(device)
        cuda = self.device.type == "cuda"
        self.augment_on = None if not config.augment else (
            ("device" if cuda else "loader") if config.augment_on == "auto" else config.augment_on)
        self.depth = self._resolve_depth()
        self.channels_last = bool(config.channels_last and cuda)
        self.workers = int(config.num_workers)
        self.pin = cuda
        self._cases: dict | None = None
        self._loader: DataLoader | None = None
        self.source = self._stored_source()
        self.device_cache = self._resolve_device_cache()
        if self.device_cache:
            self._cases = self._load_to_device()
        elif self.augment_on != "loader":
            self._loader = self._persistent_loader()

    # -- set-up
    def _resolve_depth(self) -> int | None:
        setting = self.config.pad_depth
        if setting == "batch" or (setting == "auto" and self.device.type != "cuda"):
            return None
        if isinstance(setting, int):
            return setting
        base = _base_case_dataset(self.dataset)
        if base is None or not base.cache_max_depth:
            return None  # a dataset that does not say its depths: pad per batch
        return fixed_depth(base.cache_max_depth, self.config.depth_multiple)

    def _stored_source(self) -> Dataset:
        """The dataset as the loader reads it: stored types unless the loader augments (MONAI's pipeline works on
        float32 cases), with gliofed's augmentation in place of (never on top of) a view's own."""
        if self.augment_on == "loader":
            pipeline = augment_pipeline(self.config.seed)

            def augmented(view: CaseDataset) -> Dataset:
                own = _own_transform(view)
                return view.with_transform(pipeline if own is None else _Chain(own, pipeline))

            return _case_view(self.dataset, augmented) or _Augmented(self.dataset, pipeline)

        def stored(view: CaseDataset) -> Dataset:
            own = _own_transform(view)
            return view.stored() if own is None else view.with_transform(own)

        return _case_view(self.dataset, stored) or self.dataset

    def _resolve_device_cache(self) -> bool:
        setting = self.config.device_cache
        if setting == "off" or self.augment_on == "loader":
            return False
        if setting == "on":
            return True
        if self.device.type != "cuda":
            return False  # "auto" keeps a CPU run's cases where they are: in the page cache, memory-mapped
        rows = _case_rows(self.dataset)
        if rows is None:
            return False
        channels = len(_base_case_dataset(self.dataset).modalities)
        voxels = (rows["depth"] * rows["height"] * rows["width"]).astype("int64")
        needed = int((voxels * (2 * channels + 1)).sum())  # fp16 image + uint8 mask
        return needed <= DEVICE_CACHE_SHARE * _free_device_bytes(self.device)

    def _verify(self) -> None:
        base = _base_case_dataset(self.source)
        if base is not None:
            base.verify(workers=max(1, min(8, os.cpu_count() or 1)))

    def _load_to_device(self) -> dict:
        """Every case once, from the cache to the device (verified on the way, in the loader's workers)."""
        loader = DataLoader(self.source, batch_size=None, shuffle=False, num_workers=self.workers,
                            pin_memory=self.pin)
        images, segs, has_mask, labels = [], [], [], []
        for sample in tqdm(loader, desc="cases to device", leave=False, disable=len(self.source) < 64):
            images.append(sample["image"].to(self.device, non_blocking=True))
            segs.append(sample["seg"].to(self.device, non_blocking=True))
            has_mask.append(bool(torch.as_tensor(sample["has_mask"])))
            labels.append(torch.as_tensor(sample["labels"]))
        cases = {"image": images, "seg": segs, "has_mask": torch.tensor(has_mask, dtype=torch.bool),
                 "labels": torch.stack(labels) if labels else torch.zeros((0, len(MARKERS)), dtype=torch.int64)}
        if self.pin:
            cases["has_mask"], cases["labels"] = cases["has_mask"].pin_memory(), cases["labels"].pin_memory()
        return cases

    def _persistent_loader(self) -> DataLoader:
        if self.workers > 0:
            self._verify()  # once, here: the workers inherit the checksums instead of hashing every case again
        self._sampler = _EpochSampler(len(self.source), self.workers)
        return DataLoader(self.source, batch_size=self.config.batch_size, sampler=self._sampler,
                          collate_fn=partial(collate_cases, depth=self.depth), num_workers=self.workers,
                          persistent_workers=self.workers > 0, pin_memory=self.pin,
                          prefetch_factor=PREFETCH_BATCHES if self.workers else None,
                          generator=torch.Generator().manual_seed(self.config.seed))

    # -- use
    #: the settings that shape the batches; the seed is not one of them (each call of :meth:`epoch` may bring its own)
    SHAPING = ("batch_size", "augment", "augment_on", "num_workers", "device_cache", "pad_depth", "depth_multiple",
               "channels_last", "modalities")

    def serves(self, config: TrainConfig, device: torch.device | str) -> bool:
        """Whether these batches are the ones ``config`` on ``device`` asks for (any seed): a site keeps them
        across rounds while the server's settings stay the same."""
        return torch.device(device) == self.device and all(
            getattr(config, name) == getattr(self.config, name) for name in self.SHAPING)

    def __len__(self) -> int:
        """Batches per epoch."""
        return math.ceil(len(self.dataset) / self.config.batch_size)

    def epoch(self, epoch: int, seed: int | None = None) -> Iterator[dict]:
        """The batches of epoch ``epoch`` (0-based) of a run seeded ``seed`` (default ``config.seed``), in the order
        and with the augmentation ``epoch_seed(seed, epoch)`` gives."""
        seed = self.config.seed if seed is None else int(seed)
        augment = _augment_generator(seed, epoch) if self.augment_on == "device" else None
        for batch in self._host_batches(epoch_seed(seed, epoch)):
            yield self._on_device(batch, augment)

    def _host_batches(self, seed: int) -> Iterator[dict]:
        if self._cases is not None:
            order = _epoch_order(len(self._cases["image"]), seed, self.workers)
            for start in range(0, len(order), self.config.batch_size):
                chosen = order[start:start + self.config.batch_size]
                picked = [{"image": self._cases["image"][j], "seg": self._cases["seg"][j]} for j in chosen.tolist()]
                batch = collate_cases(picked, self.depth)
                batch["has_mask"] = self._cases["has_mask"][chosen]
                batch["labels"] = self._cases["labels"][chosen]
                yield batch
            return
        if self._loader is not None:
            self._sampler.set_epoch(seed)
            yield from self._loader
            return
        # loader augmentation: MONAI's per-case pipeline, re-seeded per epoch by a fresh loader (the earlier path)
        loader = make_loader(self.source, self.config.batch_size, shuffle=True, seed=seed, num_workers=self.workers,
                             depth=self.depth)
        iter(loader)  # the iterator earlier versions' progress bar opened and dropped: their order and worker seeds
        yield from loader

    def _on_device(self, batch: dict, augment: torch.Generator | None) -> dict:
        image = batch["image"].to(self.device, non_blocking=True)
        image = image.float() if image.dtype != torch.float32 else image
        seg = batch["seg"].to(self.device, non_blocking=True)
        if augment is not None:  # in place: these are this batch's own tensors (collate_cases stacks new ones)
            augment_batch(image, seg, draw_augmentation(image.shape[0], augment), batch.get("region"))
        if self.channels_last:
            image = image.contiguous(memory_format=torch.channels_last_3d)
        return {"image": image, "seg": seg.long(), "has_mask": torch.as_tensor(batch["has_mask"]).bool(),
                "labels": torch.as_tensor(batch["labels"]), "region": batch.get("region")}

    def close(self) -> None:
        """Stop the workers and free the device-resident cases (also when garbage-collected)."""
        self._loader = None
        self._cases = None

    def __enter__(self) -> TrainBatches:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Chain:
    """A view's own transform, then gliofed's augmentation."""

    def __init__(self, first, second) -> None:
        self.first, self.second = first, second

    def __call__(self, sample: dict) -> dict:
        return self.second(self.first(sample))

    def set_random_state(self, seed=None, state=None):  # MONAI's loaders re-seed the augmentation through this
        self.second.set_random_state(seed, state)
        return self


# ---------------------------------------------------------------------------------------------- model step
def _to_device(batch: dict, device: torch.device, channels_last: bool) -> tuple[torch.Tensor, ...]:
    """(image float on ``device``, seg int64 on ``device``, has_mask bool and labels int64 where they are)."""
    image = batch["image"].to(device, non_blocking=True)
    if not image.is_floating_point() or image.dtype == torch.float16:
        image = image.float()
    if channels_last:
        image = image.contiguous(memory_format=torch.channels_last_3d)
    return (image, batch["seg"].to(device, non_blocking=True).long(), torch.as_tensor(batch["has_mask"]).bool(),
            torch.as_tensor(batch["labels"]))


def _autocast(device: torch.device, amp: bool):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp and device.type == "cuda")


def refuse_non_finite_loss(total: torch.Tensor, batch: dict, desc: str = "train") -> None:
    """Stop training with one sentence naming the batch's subjects when its loss is NaN or Inf (before the step
    that would spread it into every weight).

    Args:
        total: the batch's loss.
        batch: the batch (its ``subject`` list names the cases).
        desc: where, for the message (e.g. ``"epoch 3"``).

    Raises:
        TrainingError: the loss is not finite.
    """
    if not bool(torch.isfinite(total.detach()).all()):
        subjects = ", ".join(str(s) for s in batch.get("subject", [])) or "unnamed cases"
        raise TrainingError(f"{desc}: the training loss is {float(total.detach()):g} on the batch of {subjects}; "
                            "check these cases with `gliofed check`, or lower the learning rate.")


def train_epoch(model: torch.nn.Module, loader, loss_fn: MultiTaskLoss, optimizer: torch.optim.Optimizer,
                device: torch.device, amp: bool = True, channels_last: bool = False,
                extra_loss: Callable[[torch.nn.Module], torch.Tensor] | None = None, desc: str = "train",
                progress: bool = True) -> dict[str, float]:
    """One pass over ``loader`` (a DataLoader of sample batches, or :meth:`TrainBatches.epoch`); returns the mean of
    each loss part (and ``total``).

    ``extra_loss(model)`` is added to every step's loss (FedProx's proximal term uses it). The parts are summed on
    the device in float64 and read once at the end of the epoch; the one wait per step is the finiteness check of the
    loss, after the backward pass is queued and before the optimiser step (:func:`refuse_non_finite_loss`).
    """
    model.train()
    names: list[str] | None = None
    sums: torch.Tensor | None = None
    steps = 0
    for batch in tqdm(loader, desc=desc, leave=False, disable=not progress):
        image, seg, has_mask, labels = _to_device(batch, device, channels_last)
        with _autocast(device, amp):
            outputs = model(image)
        total, parts = loss_fn.terms(outputs, seg, has_mask, labels)
        if extra_loss is not None:
            prox = extra_loss(model)
            total = total + prox
            parts["extra"] = prox
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        refuse_non_finite_loss(total, batch, desc)  # before the step would spread it into every weight
        optimizer.step()
        parts["total"] = total
        values = torch.stack([value.detach().float().reshape(()) for value in parts.values()]).double()
        if names is None:
            names, sums = list(parts), torch.zeros_like(values)
        sums += values
        steps += 1
    if names is None:
        return {}
    return {name: value / steps for name, value in zip(names, sums.tolist())}


def _wants_compile(config: TrainConfig, device: torch.device) -> bool:
    return device.type == "cuda" if config.compile == "auto" else bool(config.compile)


def prepare_model(model: torch.nn.Module, config: TrainConfig, device: torch.device) -> torch.nn.Module:
    """Move to ``device``; channels_last_3d (CUDA), ``torch.compile`` (``config.compile``: by default on CUDA; with
    ``config.cuda_graphs`` in the ``reduce-overhead`` mode, which replays CUDA graphs) and cuDNN's autotuner (CUDA).
    Returns the module to call: the same parameters as ``model``."""
    model = model.to(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # one batch shape per run (pad_depth): tuned once
        if config.channels_last:
            model = model.to(memory_format=torch.channels_last_3d)
    if _wants_compile(config, device):
        model = torch.compile(model, mode="reduce-overhead" if config.cuda_graphs and device.type == "cuda" else None)
    return model


def fit(model: torch.nn.Module, train_set: Dataset, config: TrainConfig, epochs: int | None = None,
        optimizer: torch.optim.Optimizer | None = None, extra_loss=None, start_epoch: int = 0,
        on_epoch_end: Callable[[int, dict], None] | None = None, progress: bool = True,
        desc: str = "epoch", batches: TrainBatches | None = None, dp=None,
        schedule: tuple[int, int] | None = None) -> list[dict]:
    """Train ``model`` in place for ``epochs`` (default ``config.epochs``); return per-epoch loss dicts.

    The data order (and the device augmentation) of epoch ``e`` is seeded by ``(config.seed, e)``, so resuming at
    ``start_epoch`` sees the data of an uninterrupted run. ``config.augment`` augments (see :class:`TrainBatches`;
    a :class:`~gliofed.data.dataset.CaseDataset` view's own :func:`augment_pipeline` is replaced, never applied
    twice). ``batches``: a :class:`TrainBatches` of ``train_set`` kept by the caller across calls (e.g. a site's
    across rounds; it must :meth:`~TrainBatches.serves` ``config``); by default one is made for this call and closed
    at its end. The learning rate follows ``config.lr_schedule`` (:func:`scheduled_lr`): ``schedule`` = (epochs of
    the run already trained, epochs of the whole run) places these epochs in it (a federated site trains a few
    epochs per round); default ``(start_epoch, start_epoch + epochs)``.

    ``dp``: a :class:`~gliofed.dp.DPSettings` with ``mechanism="dp_sgd"`` trains by DP-SGD instead
    (:func:`fit_private`, one case at a time from ``train_set``; ``batches`` is not used); each epoch's dict then
    also holds ``dp_steps``, ``dp_sample_rate`` and ``dp_noise_multiplier`` (what an accountant needs) and
    ``epsilon`` at ``dp.delta`` for this call's steps.
    """
    if dp is not None and getattr(dp, "mechanism", "off") == "dp_sgd":
        return fit_private(model, train_set, config, dp, epochs, optimizer, extra_loss, start_epoch, on_epoch_end,
                           progress, desc, schedule)
    device = resolve_device(config.device)
    trained = prepare_model(model, config, device)  # same parameters; channels-last / compiled where configured
    optimizer = optimizer or make_optimizer(model, config)
    loss_fn = MultiTaskLoss(config.task_weights, config.class_weights, config.focal_gamma, seg_output_of(model))
    history = []
    total_epochs = config.epochs if epochs is None else epochs
    if total_epochs <= 0:
        return history
    done, horizon = schedule if schedule is not None else (start_epoch, start_epoch + total_epochs)
    own = batches is None
    batches = TrainBatches(train_set, config, device) if own else batches
    if not batches.serves(config, device):
        raise ConfigError("fit was given training batches made for other settings than its config's.")
    try:
        epochs_bar = tqdm(range(start_epoch, start_epoch + total_epochs), desc=desc,
                          disable=not progress or total_epochs < 2)
        for epoch in epochs_bar:
            set_lr(optimizer, scheduled_lr(config, done + epoch - start_epoch, horizon))
            losses = train_epoch(trained, batches.epoch(epoch, config.seed), loss_fn, optimizer, device, config.amp,
                                 batches.channels_last, extra_loss, desc=f"{desc} {epoch + 1}", progress=progress)
            losses["epoch"] = epoch + 1
            history.append(losses)
            if on_epoch_end is not None:
                on_epoch_end(epoch + 1, losses)
    finally:
        if own:
            batches.close()
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


def eval_batch_size(config: TrainConfig, device: torch.device | str) -> int:
    """Cases per forward pass when scoring: ``config.eval_batch``, ``"auto"`` -> 8 on CUDA, 1 on the CPU (batched
    forward passes are not bit-identical to single ones; the CPU scores one case at a time, as it always has)."""
    if config.eval_batch != "auto":
        return int(config.eval_batch)
    return 8 if torch.device(device).type == "cuda" else 1


def _shape_batches(dataset: Dataset, batch_size: int) -> list[list[int]]:
    """Case indices in batches of at most ``batch_size`` cases of one shape (never padded), in dataset order within
    a shape; one case per batch where the dataset does not say its shapes."""
    rows = _case_rows(dataset)
    if batch_size <= 1 or rows is None:
        return [[i] for i in range(len(dataset))]
    shapes = list(zip(rows["depth"], rows["height"], rows["width"]))
    groups: dict = {}
    for i, shape in enumerate(shapes):
        groups.setdefault(shape, []).append(i)
    return [members[k:k + batch_size] for members in groups.values() for k in range(0, len(members), batch_size)]


@torch.no_grad()
def predict(model: torch.nn.Module, dataset: Dataset, device: str | torch.device = "auto", amp: bool = True,
            save_masks: str | Path | None = None, progress: bool = True, hd95: bool = True,
            postprocess: Callable[[np.ndarray], np.ndarray] | None = None,
            inference: SegmentationInference | None = None, batch_size: int = 1,
            on_class_map: Callable[[np.ndarray, np.ndarray], None] | None = None) -> pd.DataFrame:
    """Run ``model`` on every case (no padding) and score it.

    Returns one row per case, in dataset order: ``subject``, ``site``, the true labels (-1 unknown),
    ``p_<marker>_<k>`` class probabilities, ``has_mask`` and per-region ``dice_WT/TC/ET`` and ``hd95_WT/TC/ET`` (NaN
    when the case has no mask) with ``hd95_unit``: ``mm`` when the sample carries its voxel ``spacing`` (the cache
    records it), else ``voxels``. With ``save_masks`` the predicted class maps are written there as
    ``<subject>.pred.npy`` (uint8, (D, H, W)). ``hd95=False`` skips the (slower) Hausdorff distances: NaN.
    ``postprocess`` (a function of the (D, H, W) class map, e.g. :func:`gliofed.inference.postprocess_mask`) adds the
    same scores of the post-processed map as ``pp_dice_*`` / ``pp_hd95_*``; the raw scores stay as they are.
    ``inference`` chooses how the volume is segmented (:class:`~gliofed.segmentation.SegmentationInference`: default
    one whole-volume pass; sliding windows, test-time flips). ``batch_size`` (default 1): up to this many cases of
    one shape per forward pass (a cache's index gives the shapes; faster, especially on a GPU, but not bit-identical
    to single cases: see :func:`eval_batch_size`). ``on_class_map`` is called with the (predicted, true) class maps
    ((D, H, W) numpy arrays) of every case with a mask, as it is predicted (dataset order with ``batch_size`` 1,
    grouped by shape otherwise), e.g. :meth:`~gliofed.segmentation.PostprocessingChoice.add`, which chooses the
    post-processing in the same pass.
    """
    device = resolve_device(device) if isinstance(device, str) else device
    model.eval().to(device)
    if save_masks is not None:
        Path(save_masks).mkdir(parents=True, exist_ok=True)
    batches = _shape_batches(dataset, batch_size)
    if all(len(chosen) == 1 for chosen in batches):
        loader = make_loader(dataset, batch_size=1, shuffle=False)  # one case at a time: the earlier path
    else:
        loader = (collate_cases([dataset[i] for i in chosen]) for chosen in batches)
    order = [i for chosen in batches for i in chosen]
    rows = []
    for batch in tqdm(loader, desc="predict", leave=False, disable=not progress, total=len(batches)):
        image, seg, has_mask, labels = _to_device(batch, device, channels_last=False)
        with _autocast(device, amp):
            probabilities, outputs = predict_volume(model, image, inference)
        predicted = to_classes(probabilities, seg_output_of(model))[:, None]
        spacings = batch.get("spacing")
        for j in range(image.shape[0]):
            spacing = None if spacings is None else [float(v) for v in torch.as_tensor(spacings)[j].reshape(-1)[:3]]
            rows.append(_score_case({name: value[j:j + 1] for name, value in outputs.items()}, predicted[j:j + 1],
                                    seg[j:j + 1], bool(has_mask[j]), labels[j], batch["subject"][j],
                                    batch["site"][j], spacing, hd95, postprocess, save_masks))
            if on_class_map is not None and bool(has_mask[j]):
                on_class_map(predicted[j, 0].cpu().numpy(), seg[j, 0].cpu().numpy())
    ranked = sorted(range(len(rows)), key=order.__getitem__)
    return pd.DataFrame([rows[k] for k in ranked])


def _score_case(outputs: dict, predicted: torch.Tensor, seg: torch.Tensor, has_mask: bool, labels: torch.Tensor,
                subject: str, site: str, spacing: list[float] | None, hd95: bool, postprocess, save_masks) -> dict:
    """One case's row of :func:`predict` from its marker outputs and class map (1, 1, D, H, W) (batch of one)."""
    row = {"subject": subject, "site": site, "has_mask": has_mask}
    for i, marker in enumerate(MARKERS):
        row[marker] = int(labels[i])
        probs = torch.softmax(outputs[marker].float(), dim=1)[0].cpu().numpy()
        for k in range(len(MARKER_CLASSES[marker])):
            row[f"p_{marker}_{k}"] = float(probs[k])
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
    return row


@torch.no_grad()
def postprocessing_for(model: torch.nn.Module, dataset: Dataset, device: str | torch.device = "auto",
                       inference: SegmentationInference | None = None,
                       candidates=POSTPROCESS_CANDIDATES, progress: bool = False, amp: bool = True) -> dict:
    """Choose the post-processing of ``model`` on ``dataset`` (its training cases): each case with a mask is predicted
    once, as :func:`predict` predicts it (bf16 autocast on CUDA with ``amp``), and
    :func:`~gliofed.segmentation.choose_postprocessing` tries every candidate on it.

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
            with _autocast(device, amp):
                probabilities, _ = predict_volume(model, image, inference, seg_output)
            yield to_classes(probabilities, seg_output)[0].cpu().numpy(), seg[0, 0].cpu().numpy()

    return choose_postprocessing(cases(), candidates)
