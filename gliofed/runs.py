"""A training run's folder, owned by this module alone: every file a run writes or reads goes through
:class:`TrainingRun`.

Layout of ``OUT/``::

    model.safetensors      final model weights (safetensors: tensors only, nothing executable)
    model.json             beside it: model config, training config, preprocessing (cache size, modalities,
                           version), epoch, decision thresholds, provenance (versions, commit, training-data
                           fingerprint), extras (history, strategy)
    state.safetensors      after every round, for --resume: model weights and the strategy's arrays (local-only:
    state.json             every site's weights) + round, strategy state, history and config as JSON
    config.json            the training config, readable
    history.csv            one row per round (bytes, wall time, test metrics)
    history_sites.csv      one row per round and site
    history.json           per-round records of a Flower run
    predictions_test.csv   the last round's test predictions of every evaluated model (column ``model``)
    .train.lock            while ``gliofed train`` writes the folder: its PID and host (a second run is refused)

A checkpoint is the pair ``<name>.safetensors`` + ``<name>.json``: loading it never runs code, so a model
handed over by a partner hospital is safe to open. Old pickle checkpoints (``model.ckpt``, ``state.pt``) are
read only with ``torch.load(weights_only=True)``; anything else in them is refused with a sentence saying how to
convert (:func:`convert_checkpoint`).

Kept apart from the engine so that the Flower ServerApp can save models without any path to site data.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from gliofed.config import TrainConfig
from gliofed.errors import CheckpointError, ConfigError, RunLockedError, first_line
from gliofed.fileio import atomic_write, atomic_write_group, folder_lock, to_json, write_csv
from gliofed.model import HEADS, MultiTaskUNet, build_model
from gliofed.preprocessing import Preprocessing
from gliofed.vocab import MODALITIES, REGIONS, SEG_CLASSES

__all__ = ["TrainingRun", "save_checkpoint", "load_checkpoint", "convert_checkpoint", "check_model_settings",
           "CHECKPOINT_FORMAT"]

#: version of the safetensors + JSON checkpoint layout (1 was the pickle ``model.ckpt``)
CHECKPOINT_FORMAT = 2
_PICKLE_MAGIC = (b"PK\x03\x04", b"\x80")  # torch.save zip archive, bare pickle
#: largest settings file (``model.json``) read: a real one is a few hundred KB (history included)
MAX_SETTINGS_BYTES = 64 * 2**20
#: largest in-plane size a checkpoint may ask its inputs to be resized to
MAX_INPUT_SIZE = 2048


def _replace_atomically(path: Path, write: Callable[[Path], Any]) -> Path:
    """``write(tmp)`` then rename over ``path`` (:func:`~gliofed.fileio.atomic_write`), creating the run folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, write)


# tensors out of a nested state, JSON for the rest -------------------------------------------------------------
def _split_tree(tree: Any, key: str, tensors: dict[str, torch.Tensor]) -> Any:
    """Move every tensor / ndarray of ``tree`` into ``tensors`` (under its path) and return the JSON-able rest,
    with ``{"__tensor__": key}`` / ``{"__ndarray__": key}`` where they were. Dicts with non-string keys (optimizer
    state) become ``{"__items__": [[key, value], ...]}``."""
    if isinstance(tree, torch.Tensor | np.ndarray):
        if key in tensors:
            raise ConfigError(f"checkpoint entry {key!r} is written twice.")
        is_array = isinstance(tree, np.ndarray)
        tensor = torch.from_numpy(np.ascontiguousarray(tree)) if is_array else tree.detach().cpu()
        tensors[key] = tensor.contiguous()
        return {"__ndarray__" if is_array else "__tensor__": key}
    if isinstance(tree, dict):
        if all(isinstance(k, str) for k in tree):
            return {k: _split_tree(v, f"{key}/{k}", tensors) for k, v in tree.items()}
        return {"__items__": [[k, _split_tree(v, f"{key}/{i}", tensors)] for i, (k, v) in enumerate(tree.items())]}
    if isinstance(tree, list | tuple):
        return [_split_tree(v, f"{key}/{i}", tensors) for i, v in enumerate(tree)]
    if isinstance(tree, np.generic):
        return tree.item()
    return tree


def _join_tree(tree: Any, tensors: dict[str, torch.Tensor], where: Path) -> Any:
    """Inverse of :func:`_split_tree`."""
    if isinstance(tree, dict):
        for marker, to_numpy in (("__tensor__", False), ("__ndarray__", True)):
            if set(tree) == {marker}:
                if tree[marker] not in tensors:
                    raise CheckpointError(f"{where}: the JSON names tensor {tree[marker]!r} that the weights file "
                                          "lacks (the two files do not belong together).")
                tensor = tensors[tree[marker]]
                return tensor.numpy() if to_numpy else tensor
        if set(tree) == {"__items__"}:
            return {k: _join_tree(v, tensors, where) for k, v in tree["__items__"]}
        return {k: _join_tree(v, tensors, where) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_join_tree(v, tensors, where) for v in tree]
    return tree


def _save_pair(weights_path: Path, tree: dict) -> Path:
    """``tree`` as ``weights_path`` (safetensors) + ``weights_path.with_suffix('.json')``, written together
    (:func:`~gliofed.fileio.atomic_write_group`: both or, on a full disk, neither)."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    rest = _split_tree(tree, "", tensors)
    text = to_json({"format": CHECKPOINT_FORMAT, **rest}, indent=1)
    weights_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_group([  # both or neither: a full disk never leaves new weights beside old settings
        (weights_path, lambda tmp: save_file(tensors, str(tmp), metadata={"gliofed": "checkpoint"})),
        (weights_path.with_suffix(".json"), lambda tmp: tmp.write_text(text, encoding="utf-8"))])
    return weights_path


def _is_pickle(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(9)
    # safetensors: an 8-byte little-endian header length, then the JSON header; a length whose low byte is 0x80
    # must not read as a pickle's protocol byte
    if len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") <= path.stat().st_size - 8:
        return False
    return any(head.startswith(magic) for magic in _PICKLE_MAGIC)


def _refuse_pickle(path: Path) -> CheckpointError:
    return CheckpointError(
        f"{path} is an old pickle checkpoint that cannot be loaded without running code from it; if you trust "
        "where it came from, load it yourself with torch.load and save it with "
        "gliofed.runs.convert_checkpoint(state, 'model.safetensors') (README: Checkpoints).")


def _load_legacy(path: Path, device: str) -> dict:
    """An old pickle checkpoint read with ``weights_only=True`` (tensors and plain types only), or the refusal."""
    try:
        with open(path, "rb") as f:  # a file object: torch.load would dispatch a *.safetensors name elsewhere
            state = torch.load(f, map_location="cpu", weights_only=True)
    except Exception as error:  # the weights-only unpickler refuses any global it does not know: never run it
        raise _refuse_pickle(path) from error
    if not isinstance(state, dict) or "model" not in state:
        raise _refuse_pickle(path)
    return state


def _read_settings(sidecar: Path) -> dict:
    """A checkpoint's JSON settings, refused in one sentence when too large, not JSON, too deeply nested or not of
    this format."""
    size = sidecar.stat().st_size
    if size > MAX_SETTINGS_BYTES:
        raise CheckpointError(f"{sidecar}: {size:,} bytes is too large for a checkpoint's settings file (at most "
                              f"{MAX_SETTINGS_BYTES // 2**20} MB).")
    try:
        tree = json.loads(sidecar.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{sidecar}: not valid JSON ({error}).") from error
    except RecursionError:
        raise CheckpointError(f"{sidecar}: nested too deeply to be a gliofed checkpoint's settings.") from None
    if not isinstance(tree, dict) or tree.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{sidecar}: not a gliofed checkpoint of format {CHECKPOINT_FORMAT}.")
    return tree


def _load_pair(path: Path, device: str = "cpu",
               inspect: Callable[[dict, dict[str, tuple[int, ...]]], Any] | None = None) -> dict:
    """The tree saved by :func:`_save_pair` at ``path`` (``.safetensors``, or the ``.json`` beside it).

    ``inspect(settings, shapes)``, when given, sees the JSON settings and every tensor's shape from the weights
    file's header before any tensor is read (and may raise)."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    weights = path.with_suffix(".safetensors") if path.suffix == ".json" else path
    sidecar = weights.with_suffix(".json")
    if not weights.is_file():
        raise CheckpointError(f"{weights}: checkpoint not found.")
    if _is_pickle(weights):
        raise _refuse_pickle(weights)
    if not sidecar.is_file():
        raise CheckpointError(f"{weights}: its settings file {sidecar.name} is missing (a checkpoint is the "
                              ".safetensors weights plus the .json beside them).")
    tree = _read_settings(sidecar)
    try:
        if inspect is not None:
            with safe_open(str(weights), framework="pt") as stream:  # the header only: nothing allocated yet
                shapes = {key: tuple(stream.get_slice(key).get_shape()) for key in stream.keys()}  # noqa: SIM118
            inspect(tree, shapes)
        tensors = load_file(str(weights), device="cpu")  # callers move the model; "auto" is no torch device
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"{weights}: not a readable safetensors file ({first_line(error)}).") from error
    try:
        return _join_tree(tree, tensors, sidecar)
    except RecursionError:
        raise CheckpointError(f"{sidecar}: nested too deeply to be a gliofed checkpoint's settings.") from None


def _refuse_non_finite(where: Path, weights: dict) -> None:
    """Refuse a model whose weights hold NaN or Inf (a diverged or damaged model predicts NaN)."""
    for key, value in weights.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise CheckpointError(f"{where}: weight {key!r} holds NaN or Inf values (a diverged or damaged model); "
                                  "it is not loaded.")


def _model_shapes(settings: dict, shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]] | None:
    """The model weights' shapes of a checkpoint (state-dict key -> shape), from its settings and the file header."""
    model = settings.get("model")
    if not isinstance(model, dict):
        return None
    out = {}
    for key, ref in model.items():
        tensor = ref.get("__tensor__") if isinstance(ref, dict) else None
        if not isinstance(tensor, str) or tensor not in shapes:
            return None
        out[key] = shapes[tensor]
    return out


def _positive_size(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_INPUT_SIZE


def check_model_settings(where: str | Path, state: dict,
                         shapes: dict[str, tuple[int, ...]] | None) -> tuple[TrainConfig, dict, dict]:
    """Check a checkpoint's settings, and its weights' shapes, before any weight is read: the model is built on the
    meta device (no memory) from the settings and compared with the shapes the weights file declares.

    Args:
        where: the checkpoint (for messages).
        state: the checkpoint's settings (``train_config``, ``model_config``, ``preprocessing``).
        shapes: state-dict key -> shape as the weights file declares it (None: the file's tensors do not match the
            settings' names).

    Returns:
        (training config, model config, preprocessing).

    Raises:
        CheckpointError: one sentence naming the setting that is wrong: types, heads that are not gliofed's markers,
            contrasts that disagree with the input channels, an in-plane size that is not a positive integer up to
            :data:`MAX_INPUT_SIZE`, weights that do not fit.
    """
    try:
        config = TrainConfig.from_dict(state["train_config"])
    except (KeyError, TypeError, ValueError, AttributeError, ConfigError) as error:
        raise CheckpointError(f"{where}: its training settings are not valid ({first_line(error)}).") from None
    spec = state.get("model_config") or config
    if not isinstance(spec, dict | TrainConfig):
        raise CheckpointError(f"{where}: its model settings are a {type(spec).__name__}, not a mapping.")
    try:
        with torch.device("meta"):  # shapes only: a hostile size allocates nothing
            model = build_model(spec)
    except Exception as error:  # any value of an untrusted file: TypeError, ValueError, RuntimeError ...
        raise CheckpointError(f"{where}: its model settings do not describe a gliofed network "
                              f"({first_line(error, 160)}).") from None
    heads = model.config["heads"]
    if heads != HEADS:
        wanted = ", ".join(f"{k} ({v})" for k, v in HEADS.items())
        raise CheckpointError(f"{where}: the model's heads {dict(heads)} do not match gliofed's markers {wanted}.")
    seg_output = model.config.get("seg_output", "classes")
    wanted_channels = len(REGIONS) if seg_output == "regions" else len(SEG_CLASSES)
    if model.config["seg_classes"] != wanted_channels:
        raise CheckpointError(f"{where}: the model's segmentation head has {model.config['seg_classes']} outputs, "
                              f"not the {wanted_channels} of gliofed's {seg_output!r} head.")
    preprocessing = state.get("preprocessing")
    preprocessing = {"modalities": list(config.modalities)} if preprocessing is None else preprocessing
    if not isinstance(preprocessing, dict):
        raise CheckpointError(f"{where}: its preprocessing is a {type(preprocessing).__name__}, not a mapping.")
    size = preprocessing.get("size")
    if size is not None and not _positive_size(size):
        raise CheckpointError(f"{where}: its preprocessing size {size!r} is not an in-plane size from 1 to "
                              f"{MAX_INPUT_SIZE}.")
    modalities = preprocessing.get("modalities") or list(config.modalities)
    if (not isinstance(modalities, list | tuple) or not all(isinstance(m, str) for m in modalities)
            or any(m not in MODALITIES for m in modalities) or len(set(modalities)) != len(modalities)):
        raise CheckpointError(f"{where}: its preprocessing contrasts {modalities!r} are not distinct names among "
                              f"{', '.join(MODALITIES)}.")
    if len(modalities) != model.config["in_channels"]:
        raise CheckpointError(f"{where}: its preprocessing gives {len(modalities)} contrast(s) "
                              f"({', '.join(modalities)}) but the model takes {model.config['in_channels']} input "
                              "channel(s).")
    expected = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    if shapes != expected:
        if shapes is None:
            detail = "its settings name tensors the weights file lacks"
        else:
            missing = [k for k in expected if k not in shapes]
            extra = [k for k in shapes if k not in expected]
            wrong = [k for k in expected if k in shapes and shapes[k] != expected[k]]
            detail = (f"missing {missing[0]!r}" if missing else f"unexpected {extra[0]!r}" if extra else
                      f"{wrong[0]!r} is {tuple(shapes[wrong[0]])} in the file, {expected[wrong[0]]} in the model")
        raise CheckpointError(f"{where}: the weights do not fit the model it describes ({detail}).")
    return config, dict(model.config), preprocessing


# the model checkpoint -----------------------------------------------------------------------------------------
def save_checkpoint(path: str | Path, model: torch.nn.Module, config: TrainConfig,
                    optimizer: torch.optim.Optimizer | None = None, epoch: int = 0, extra: dict | None = None,
                    preprocessing: Preprocessing | dict | None = None, thresholds: dict | None = None,
                    provenance: dict | None = None) -> Path:
    """Save a model as ``<path stem>.safetensors`` (weights, optimiser tensors) + ``<path stem>.json`` (model and
    training config, preprocessing, epoch, decision thresholds, provenance, ``extra`` such as the history).

    Args:
        path: the weights file (a suffix other than ``.safetensors`` is replaced by it).
        model, config: the model and its training config.
        optimizer: optional optimiser whose state is kept too.
        epoch: epochs or rounds trained.
        extra: JSON-able extras (arrays are stored as tensors).
        preprocessing: the :class:`~gliofed.preprocessing.Preprocessing` record the model was trained with (its
            cache's, with the model's contrasts: :func:`gliofed.inference.preprocessing_of_cache`), stored as its
            dictionary; ``evaluate``, ``predict`` and Flower read it back.
        thresholds: each binary marker's decision threshold and how it was chosen (see
            :func:`gliofed.metrics.choose_thresholds`); ``evaluate`` and ``predict`` use them. Default none (0.5).
        provenance: what the model was trained on (e.g. ``{"training_data": cases_fingerprint(...)}``); the software
            versions and the git commit (:func:`gliofed.provenance.software_provenance`) are always added.

    Returns:
        the path of the weights file.
    """
    from gliofed.provenance import software_provenance

    model = getattr(model, "_orig_mod", model)  # unwrap torch.compile
    path = Path(path)
    weights = path if path.suffix == ".safetensors" else path.with_suffix(".safetensors")
    state = {
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "model_config": getattr(model, "config", {}),
        "train_config": config.to_dict(),
        "preprocessing": _preprocessing_record(preprocessing, config),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "epoch": epoch,
        "thresholds": thresholds or {},
        "provenance": {**software_provenance(), **(provenance or {})},
        "extra": extra or {},
    }
    return _save_pair(weights, state)


def _preprocessing_record(preprocessing: Preprocessing | dict | None, config: TrainConfig) -> dict:
    """The checkpoint's ``preprocessing`` entry: the record's dictionary; a record whose channels are not the model's
    contrasts is refused (the checkpoint would contradict itself)."""
    if preprocessing is None:
        return {"modalities": list(config.modalities)}
    record = preprocessing.to_dict() if isinstance(preprocessing, Preprocessing) else dict(preprocessing)
    channels = record.get("modalities")
    if channels is not None and tuple(channels) != tuple(config.modalities):
        raise ConfigError(f"the preprocessing record's contrasts {', '.join(channels)} are not the model's "
                          f"{', '.join(config.modalities)}.")
    return record


def _checkpoint_path(path: Path) -> Path:
    """A run folder -> its model; ``model.ckpt`` named but only the new ``model.safetensors`` there -> the latter."""
    if path.is_dir():
        for name in (TrainingRun.MODEL, TrainingRun.LEGACY_MODEL):
            if (path / name).is_file():
                return path / name
        raise CheckpointError(f"{path}: no {TrainingRun.MODEL} in this folder.")
    if not path.is_file() and path.with_suffix(".safetensors").is_file():
        return path.with_suffix(".safetensors")
    return path


def load_checkpoint(path: str | Path, device: str = "cpu") -> tuple[MultiTaskUNet, TrainConfig, dict]:
    """Load a checkpoint without running any code from it.

    Args:
        path: ``model.safetensors`` (with ``model.json`` beside it), that JSON, or a run folder. An old pickle
            ``model.ckpt`` loads only when ``torch.load(weights_only=True)`` accepts it.
        device: kept for callers; tensors are read to the CPU (like the model built here), and any device name,
            ``"auto"`` included, is accepted; move the model with ``model.to(...)``.

    Returns:
        (model with weights, training config, the whole checkpoint: ``model``, ``model_config``, ``train_config``,
        ``preprocessing``, ``optimizer``, ``epoch``, ``thresholds``, ``provenance``, ``extra``).

    Raises:
        CheckpointError: missing, damaged, a refused pickle, settings that are not valid
            (:func:`check_model_settings`, checked before any weight is read: the model is first built on the
            meta device), weights that do not fit the model config, or weights that hold NaN or Inf.
    """
    path = _checkpoint_path(Path(path))
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found.")
    checked: dict = {}

    def inspect(settings: dict, shapes: dict) -> None:  # before any weight is read
        checked["settings"] = check_model_settings(path, settings, _model_shapes(settings, shapes))

    if _is_pickle(path):
        state = _load_legacy(path, device)
        weights = state.get("model")
        shapes = ({k: tuple(v.shape) for k, v in weights.items() if isinstance(v, torch.Tensor)}
                  if isinstance(weights, dict) else None)
        checked["settings"] = check_model_settings(path, state, shapes)
    else:
        state = _load_pair(path, device, inspect)
    config, model_config, preprocessing = checked["settings"]
    _refuse_non_finite(path, state["model"])
    try:
        model = build_model(model_config)
        model.load_state_dict(state["model"])
    except (KeyError, TypeError, RuntimeError) as error:
        raise CheckpointError(f"{path}: the weights do not fit the model it describes "
                              f"({first_line(error, 160)}).") from error
    state["preprocessing"] = preprocessing
    state.setdefault("thresholds", {})  # a checkpoint from before thresholds were stored: 0.5
    _check_thresholds(path, state["thresholds"])
    return model, config, state


def _check_thresholds(path: Path, record) -> None:
    """A checkpoint's decision thresholds decide what ``predict`` calls a patient: each stored one must be a number
    from 0 to 1 (a hostile or damaged ``model.json`` is refused in one sentence, never read as a silent 0.5)."""
    if not isinstance(record, dict):
        raise CheckpointError(f"{path}: its decision thresholds are a {type(record).__name__}, not a mapping.")
    stored = record.get("markers", {})
    if not isinstance(stored, dict):
        raise CheckpointError(f"{path}: its decision thresholds' markers are a {type(stored).__name__}, not a mapping.")
    for marker, value in stored.items():
        if (isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value)
                or not 0.0 <= value <= 1.0):
            raise CheckpointError(f"{path}: its decision threshold for {str(marker)[:40]!r} is {str(value)[:40]!r}, "
                                  "not a probability from 0 to 1.")


def convert_checkpoint(state: dict, path: str | Path) -> Path:
    """Write an old checkpoint dict in the safe format.

    Args:
        state: what ``torch.load`` returned for an old ``model.ckpt`` whose origin you trust (loading a pickle can
            run code: the README's "Checkpoints" section shows the one-liner; gliofed itself never does it).
        path: the new weights file (``model.json`` is written beside it).

    Returns:
        the path of the weights file.
    """
    config = TrainConfig.from_dict(state["train_config"])
    model = build_model(state.get("model_config") or config)
    model.load_state_dict(state["model"])
    return save_checkpoint(path, model, config, epoch=int(state.get("epoch", 0)), extra=state.get("extra") or {},
                           preprocessing=state.get("preprocessing"), thresholds=state.get("thresholds"))


class TrainingRun:
    """The folder of one training run (see the module docstring for its files).

    >>> run = TrainingRun("runs/fedavg")          # doctest: +SKIP
    >>> model, config, state = run.load_model()    # doctest: +SKIP
    """

    MODEL = "model.safetensors"
    MODEL_SETTINGS = "model.json"
    STATE = "state.safetensors"
    STATE_SETTINGS = "state.json"
    LEGACY_MODEL = "model.ckpt"
    LEGACY_STATE = "state.pt"
    CONFIG = "config.json"
    HISTORY = "history.csv"
    SITE_HISTORY = "history_sites.csv"
    ROUNDS = "history.json"
    PREDICTIONS = "predictions_test.csv"
    LOCK = ".train.lock"

    def __init__(self, out_dir: str | Path) -> None:
        self.out_dir = Path(out_dir)

    def __repr__(self) -> str:
        return f"TrainingRun({str(self.out_dir)!r})"

    def path(self, name: str) -> Path:
        """The path of one of the run's files (e.g. ``TrainingRun.MODEL``)."""
        return self.out_dir / name

    def lock(self, who: str = "gliofed train"):
        """A context manager holding the run folder's lock (:attr:`LOCK`: PID and host, the cache's mechanism,
        :func:`~gliofed.fileio.folder_lock`) while a command writes the run; re-entrant within this process.

        Args:
            who: the writer, as another writer's refusal names it (default ``"gliofed train"``).

        Raises:
            RunLockedError: another live process is writing this run folder.
        """
        return folder_lock(self.out_dir, who, "run folder", RunLockedError, name=self.LOCK, reentrant=True)

    # the final model ------------------------------------------------------------------------------------------
    @property
    def has_model(self) -> bool:
        return self.path(self.MODEL).is_file() or self.path(self.LEGACY_MODEL).is_file()

    def save_model(self, model: torch.nn.Module, config: TrainConfig, epoch: int = 0, extra: dict | None = None,
                   optimizer: torch.optim.Optimizer | None = None,
                   preprocessing: Preprocessing | dict | None = None, thresholds: dict | None = None,
                   provenance: dict | None = None) -> Path:
        """Write the final model (``model.safetensors`` + ``model.json``) with its configs, ``preprocessing`` (see
        :func:`gliofed.inference.preprocessing_of_cache`), ``epoch``, decision ``thresholds``, ``provenance`` and
        ``extra`` (e.g. history); see :func:`save_checkpoint`."""
        return save_checkpoint(self.path(self.MODEL), model, config, optimizer, epoch, extra, preprocessing,
                               thresholds, provenance)

    def load_model(self, device: str = "cpu") -> tuple[MultiTaskUNet, TrainConfig, dict]:
        """(model with weights, training config, the whole checkpoint)."""
        return load_checkpoint(self.out_dir, device)

    # the round-by-round state -----------------------------------------------------------------------------------
    @property
    def has_state(self) -> bool:
        return self.path(self.STATE).is_file() or self.path(self.LEGACY_STATE).is_file()

    def save_state(self, rnd: int, model: torch.nn.Module, strategy_state: dict, history: list[dict],
                   config: TrainConfig, data: dict | None = None) -> Path:
        """Write what :meth:`load_state` needs to resume after round ``rnd`` (arrays of the strategy state, e.g.
        local-only's per-site weights, go to the safetensors file; the rest to JSON). ``data``: what the run trains
        on (manifest and cases fingerprints, cache settings; a resume must match it)."""
        model = getattr(model, "_orig_mod", model)
        state = {"round": rnd, "model": dict(model.state_dict()), "strategy": strategy_state, "history": history,
                 "config": config.to_dict()}
        if data is not None:
            state["data"] = data
        return _save_pair(self.path(self.STATE), state)

    def load_state(self) -> dict:
        """The last saved round: ``round``, ``model`` (state dict), ``strategy``, ``history``, ``config`` and, when
        saved, ``data``."""
        if not self.path(self.STATE).is_file() and self.path(self.LEGACY_STATE).is_file():
            legacy = self.path(self.LEGACY_STATE)
            if _is_pickle(legacy):
                try:
                    return _load_legacy(legacy, "cpu")
                except CheckpointError as error:
                    raise CheckpointError(f"{legacy} is an old pickle resume state that cannot be loaded without "
                                          "running code from it; start the run again without --resume (or with "
                                          "another --out).") from error
        state = _load_pair(self.path(self.STATE))
        _refuse_non_finite(self.path(self.STATE), state.get("model") or {})
        return state

    # tables ---------------------------------------------------------------------------------------------------
    def save_config(self, config: TrainConfig) -> Path:
        text = to_json(config.to_dict(), indent=2)
        return _replace_atomically(self.path(self.CONFIG), lambda tmp: tmp.write_text(text, encoding="utf-8"))

    def save_history(self, history) -> None:
        """A simulator :class:`~gliofed.federated.simulate.History` as ``history.csv`` and ``history_sites.csv``."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for name, table in ((self.HISTORY, history.to_frame()), (self.SITE_HISTORY, history.site_frame())):
            write_csv(self.path(name), table)

    def save_rounds(self, strategy: str, rounds: list[dict], **about) -> Path:
        """Per-round records as ``history.json`` (the Flower ServerApp writes it after every round), with ``about``
        the run as a whole (e.g. ``sites``: each site's cases and device; ``preprocessing``: the sites' record)."""
        text = to_json({"strategy": strategy, **about, "rounds": rounds}, indent=2)
        return _replace_atomically(self.path(self.ROUNDS), lambda tmp: tmp.write_text(text))

    def load_rounds(self) -> dict:
        return json.loads(self.path(self.ROUNDS).read_text())

    def save_predictions(self, predictions: pd.DataFrame) -> Path:
        """The last round's test predictions of every evaluated model (column ``model``)."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        return write_csv(self.path(self.PREDICTIONS), predictions)

    def load_predictions(self) -> pd.DataFrame | None:
        """The saved test predictions, or ``None`` when the run saved none."""
        path = self.path(self.PREDICTIONS)
        return pd.read_csv(path, dtype={"subject": str, "site": str}) if path.is_file() else None
