"""Site: one hospital. It owns its cases and answers the server only with declared payloads."""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from gliofed.config import TrainConfig
from gliofed.data.dataset import CaseDataset
from gliofed.data.transforms import augment_pipeline
from gliofed.dp import Accountant, DPSettings, check_no_batchnorm, gaussian_sum
from gliofed.engine import TrainBatches, fit, make_optimizer, resolve_device, seed_everything
from gliofed.errors import ConfigError, PolicyError
from gliofed.federated.protocol import DistillSettings, Payload, arrays_to_state, state_to_arrays
from gliofed.federated.site.condense import condense
from gliofed.federated.site.policy import SitePolicy
from gliofed.model import MultiTaskUNet, build_model
from gliofed.vocab import MARKERS, MODALITIES, TASKS

__all__ = ["Site"]

log = logging.getLogger("gliofed.federated")


def _declared_model_bytes(model_config: dict) -> int:
    """Bytes of the network ``model_config`` describes, counted on the ``meta`` device (nothing allocated), so
    that a request for a huge network is refused before the site builds it."""
    try:
        with torch.device("meta"):
            network = build_model(model_config)
    except Exception:  # not buildable: the request fails later with its own error
        return 0
    return sum(t.numel() * t.element_size() for t in network.state_dict().values())


def _held_out(cache_dir, members: list[str], modalities, seed: int, external_site: str | None) -> CaseDataset | None:
    """The site's held-out cases (its ``test`` split), or None when it has none."""
    from gliofed.errors import ConfigError

    try:
        return CaseDataset(cache_dir, split="test", sites=members, modalities=modalities, seed=seed,
                           external_site=external_site)
    except ConfigError:  # no test case at this site
        return None


def _schedule(settings: dict) -> tuple[int, int] | None:
    """(epochs of the run trained before this round, epochs of the whole run) from a ``train`` request's ``schedule``
    (``{"round", "rounds"}``, checked by the site's policy), or None when the request carries none."""
    schedule = settings.get("schedule")
    if not schedule:
        return None
    epochs = int(settings["epochs"])
    return (int(schedule["round"]) - 1) * epochs, int(schedule["rounds"]) * epochs


class Site:
    """A federated site over its training cases in a preprocessed cache.

    The cases live in a private attribute and are never returned; :meth:`handle` is the only entry
    point, taking and returning :class:`Payload` objects.

    A site keeps what a round would otherwise set up again: its training batches (:class:`~gliofed.engine.TrainBatches`:
    loader workers, verified cases, a device-resident cache) while the server's batch settings stay the same, and its
    training network (on its device, compiled once) while the architecture stays the same; every round loads the
    broadcast weights into it (all parameters and buffers).

    Args:
        name: site name (the manifest's ``site``).
        cache_dir: preprocessed cache holding this site's cases.
        modalities: input contrasts (default all four).
        seed: seeds the split of cases whose manifest split is blank.
        external_site: the held-out site, if any (its cases are never training cases).
        members: the sites whose training cases this participant holds (default: ``[name]``; the centralized
            baseline's data centre holds them all).
        policy: what this site's operator allows a server to ask (default :class:`SitePolicy` ()); a request
            outside it is refused with a :class:`~gliofed.errors.PolicyError`.
    """

    def __init__(self, name: str, cache_dir: str | Path, modalities: Sequence[str] = MODALITIES, seed: int = 0,
                 external_site: str | None = None, members: Sequence[str] | None = None,
                 policy: SitePolicy | None = None) -> None:
        self.name = name
        self.__policy = policy if policy is not None else SitePolicy()
        self.__cases = CaseDataset(cache_dir, split="train", sites=list(members or [name]), modalities=modalities,
                                   seed=seed, external_site=external_site)
        #: every differentially private release this site has sent, over all requests (its accountant)
        self.__spent = Accountant()
        self.__cache_dir = Path(cache_dir)
        self.__held_out = _held_out(cache_dir, list(members or [name]), modalities, seed, external_site)
        self.__batches: TrainBatches | None = None
        self.__network: tuple[str, MultiTaskUNet] | None = None
        #: the optimizer state of the last ``train`` request that asked to keep it (``keep_optimizer``); stays here
        self.__optimizer_state: dict | None = None

    @property
    def policy(self) -> SitePolicy:
        """The operator's policy this site answers under (read-only)."""
        return self.__policy

    @property
    def privacy_spent(self) -> Accountant:
        """A copy of the accountant of every DP release this site has sent (read-only)."""
        return Accountant.from_dict(self.__spent.to_dict())

    @property
    def n_cases(self) -> int:
        """Number of training cases (sites disclose this: FedAvg weights by it)."""
        return len(self.__cases)

    def raw_bytes(self) -> int:
        """Bytes of this site's cached training cases: what pooling them (centralized) would transfer."""
        total = 0
        for subject in self.__cases.index["subject_id"]:
            for suffix in ("image", "seg"):
                path = self.__cache_dir / "cases" / f"{subject}.{suffix}.npy"
                total += path.stat().st_size if path.exists() else 0
        return total

    def handle(self, task: str, model: Payload, settings: dict) -> Payload:
        """Answer one server request.

        Args:
            task: ``"train"`` (local training from the global model: FedAvg, FedProx, local-only, the centralized
                data centre), ``"distill"`` (soft labels + condensed synthetic set), ``"describe"`` (the number
                and bytes of its training cases: what pooling them would transfer) or ``"evaluate"`` (the model's
                quick metrics on the site's held-out cases: its ``test`` split; federated evaluation).
            model: the global model (``model`` payload).
            settings: ``train`` (TrainConfig as dict), ``epochs``, ``seed``, ``mu`` (FedProx),
                ``keep_optimizer`` (train: continue from the optimizer state this site kept from its last such
                request, with the request's learning rate, and keep the new state; the state never leaves the
                site), ``distill`` (DistillSettings as dict).

        Returns:
            ``weights_update`` (weights, in the precision of the model it was sent; meta ``n_cases``,
            ``n_masked``, ``n_labelled`` per marker, ``loss``), ``distilled_set``, ``site_info`` or ``site_metrics``
            (meta ``n_cases``: held-out cases, ``metrics``: Dice per region and AUC per marker, null where not
            computable) payload.

        Raises:
            PolicyError: the request, or the reply it would produce, is outside this site's :attr:`policy`
                (checked before any case is read, and again before the reply leaves).
        """
        model_bytes = sum(int(np.asarray(a).nbytes) for a in model.arrays.values()) if model is not None else 0
        if task != "describe" and isinstance((settings or {}).get("model_config"), dict):
            model_bytes = max(model_bytes, _declared_model_bytes(settings["model_config"]))
        self.__policy.check_request(self.name, task, settings or {}, model_bytes)
        dp, planned = self._plan_privacy(task, settings or {})
        if task == "evaluate" and self.n_held_out < self.__policy.min_group:
            raise PolicyError(f"site {self.name} refuses the 'evaluate' request: it has {self.n_held_out} held-out "
                              f"case(s), fewer than the {self.__policy.min_group} any summary it sends must pool.")
        if task == "distill" and self.n_cases < self.__policy.min_group:
            raise PolicyError(f"site {self.name} refuses the 'distill' request: it has {self.n_cases} training case(s),"
                              f" fewer than the {self.__policy.min_group} any summary it sends must pool.")
        reply = self._answer(task, model, settings, dp)
        if planned is not None:  # what this reply spends alone, and what the site has spent with it
            alone = Accountant()
            alone.step(*self._mechanism(task, settings or {}, dp))
            reply.meta["dp"] = {**dp.to_dict(), "epsilon": alone.epsilon(dp.delta),
                                "epsilon_total": planned.epsilon(dp.delta)}
        if reply.kind in ("distilled_set", "weights_update"):
            reply = self._audit_outgoing(reply, dp)
        self.__policy.check_reply_size(self.name, reply.nbytes)
        if planned is not None:
            self.__spent = planned
        return reply

    def _mechanism(self, task: str, settings: dict, dp: DPSettings) -> tuple[float, float, int]:
        """(noise multiplier, sample rate, steps) of the DP mechanism a request runs, known before any case is
        read: DP-SGD takes round(N / B) Poisson-sampled steps per epoch at rate B / N (:class:`gliofed.dp.DPSGD`);
        a clipped update is one release whose sensitivity is twice the clipping norm (two clipped updates differ by
        at most that), so its multiplier counts half; the Gaussian release of summaries is one step."""
        if dp.mechanism == "dp_sgd" and task == "train":
            batch = int((settings.get("train") or {}).get("batch_size", 1))
            rate = min(1.0, batch / max(self.n_cases, 1))
            return dp.noise_multiplier, rate, int(settings.get("epochs", 1)) * max(1, round(1.0 / rate))
        if dp.mechanism == "clipped_update":
            return dp.noise_multiplier / 2.0, 1.0, 1
        return dp.noise_multiplier, 1.0, 1

    def _plan_privacy(self, task: str, settings: dict) -> tuple[DPSettings, Accountant | None]:
        """The request's DP settings and the accountant as it would stand after answering it (None without DP);
        refused (:class:`PolicyError`) when the policy does not allow it (:meth:`SitePolicy.check_privacy`)."""
        try:
            dp = DPSettings.from_dict(settings.get("dp"))
        except (ConfigError, TypeError) as error:
            raise PolicyError(f"site {self.name} refuses the {task!r} request: {error}") from None
        planned, epsilon_after = None, None
        if dp.enabled and task in ("train", "distill"):
            planned = self.privacy_spent
            planned.step(*self._mechanism(task, settings, dp))
            epsilon_after = planned.epsilon(dp.delta)
        self.__policy.check_privacy(self.name, task, dp, epsilon_after)
        return dp, planned

    def _answer(self, task: str, model: Payload, settings: dict, dp: DPSettings | None = None) -> Payload:
        if task == "describe":
            return Payload("site_info", {}, {"site": self.name, "n_cases": self.n_cases, "raw_bytes": self.raw_bytes()})
        if self.__policy.device is not None:  # the operator, not the server, picks the site's hardware
            settings = {**settings, "train": {**settings["train"], "device": self.__policy.device}}
        config = TrainConfig.from_dict(settings["train"])
        network = self._network(settings["model_config"], keep=task == "train")
        network.load_state_dict(arrays_to_state(model.arrays))
        seed = int(settings["seed"])
        seed_everything(seed)
        dp = dp or DPSettings()
        if task == "train":
            sent = {k: np.asarray(v).dtype for k, v in model.arrays.items()}
            return self._train(network, config, settings, seed, dp, sent)
        if task == "evaluate":
            return self._evaluate(network, config)
        if task == "distill":
            return condense(network, self.__cases, DistillSettings(**settings.get("distill", {})), seed, self.name,
                            min_group=self.__policy.min_group, dp=dp if dp.mechanism == "gaussian" else None)
        raise ValueError(f"site {self.name}: unknown task {task!r}; expected one of {', '.join(TASKS)}.")

    def _network(self, model_config: dict, keep: bool) -> MultiTaskUNet:
        """The network of ``model_config``: for training, the one this site keeps across rounds (built again only
        when the architecture changes)."""
        if not keep:
            return build_model(model_config)
        key = json.dumps(model_config, sort_keys=True, default=str)
        if self.__network is None or self.__network[0] != key:
            self.__network = (key, build_model(model_config))
        network = self.__network[1]
        network.requires_grad_(True)
        network.zero_grad(set_to_none=True)
        return network

    def _batches(self, config: TrainConfig) -> TrainBatches:
        """This site's training batches for ``config``, kept across rounds while they serve it."""
        device = resolve_device(config.device)
        if self.__batches is None or not self.__batches.serves(config, device):
            if self.__batches is not None:
                self.__batches.close()
            self.__batches = TrainBatches(self.__cases, config, device)
        return self.__batches

    def _train(self, network: MultiTaskUNet, config: TrainConfig, settings: dict, seed: int,
               dp: DPSettings | None = None, received_dtypes: dict | None = None) -> Payload:
        dp = dp or DPSettings()
        if dp.mechanism == "dp_sgd":
            try:
                check_no_batchnorm(network)
            except ConfigError as error:
                raise PolicyError(f"site {self.name} refuses the 'train' request: {error}") from None
        before = None
        if dp.mechanism == "clipped_update":
            before = {k: v.detach().cpu().clone() for k, v in network.state_dict().items()}
        mu = float(settings.get("mu", 0.0))
        extra = None
        if mu > 0:  # FedProx: mu/2 * ||w - w_global||^2
            anchor = [p.detach().clone() for p in network.parameters()]

            def extra(model: torch.nn.Module) -> torch.Tensor:
                return 0.5 * mu * sum(((p - a.to(p.device)) ** 2).sum() for p, a in zip(model.parameters(), anchor))

        config = config.replace(seed=seed)
        epochs, schedule = int(settings["epochs"]), _schedule(settings)
        keep = settings.get("keep_optimizer") is True
        optimizer = self._optimizer(network, config) if keep else None
        if dp.mechanism == "dp_sgd":  # per-case clipped steps read the cases one by one, augmented per case
            self.__cases.transform = augment_pipeline(seed) if config.augment else None
            try:
                history = fit(network, self.__cases, config, epochs=epochs, optimizer=optimizer, extra_loss=extra,
                              progress=False, dp=dp, schedule=schedule)
            finally:
                self.__cases.transform = None
        else:
            history = fit(network, self.__cases, config, epochs=epochs, optimizer=optimizer, extra_loss=extra,
                          progress=False, batches=self._batches(config), schedule=schedule)
        if keep:
            self.__optimizer_state = copy.deepcopy(optimizer.state_dict())
        network.zero_grad(set_to_none=True)  # the weights leave; the gradients need not wait for the next round
        if before is not None:
            network.cpu()
            self._clip_and_noise(network, before, dp, seed)
        # no step: no loss (not NaN); under DP the training loss is not released (it is not noised)
        loss = float(np.mean([h["total"] for h in history])) if history and not dp.enabled else None
        # counts FedAvg weights the decoder and each marker head by (disclosed, like n_cases)
        labels = self.__cases.labels
        labelled = {marker: int((labels[:, j] >= 0).sum()) for j, marker in enumerate(MARKERS)}
        n_masked = int(self.__cases.index["has_mask"].astype(bool).sum())
        # answer in the precision the model came in (a server that sends float16 weights gets float16 back)
        sent = received_dtypes or {}
        arrays = {k: v.astype(sent[k]) if k in sent and v.dtype.kind == "f" and sent[k].kind == "f" else v
                  for k, v in state_to_arrays(network).items()}
        return Payload("weights_update", arrays,
                       {"site": self.name, "n_cases": self.n_cases, "n_masked": n_masked,
                        "n_labelled": labelled, "loss": loss})

    def _optimizer(self, network: MultiTaskUNet, config: TrainConfig) -> torch.optim.Optimizer:
        """A new optimizer for ``network``, continuing the kept state (moments, step counts) when this site has one
        for an optimizer of the same kind and shape, with the request's learning rate and weight decay."""
        optimizer = make_optimizer(network, config)
        if self.__optimizer_state is not None:
            try:
                optimizer.load_state_dict(copy.deepcopy(self.__optimizer_state))
            except (ValueError, KeyError):  # another network or optimizer: start fresh
                optimizer = make_optimizer(network, config)
            for group in optimizer.param_groups:
                group["lr"], group["weight_decay"] = config.lr, config.weight_decay
        return optimizer

    @property
    def n_held_out(self) -> int:
        """Number of held-out cases (the site's ``test`` split) that federated evaluation scores."""
        return 0 if self.__held_out is None else len(self.__held_out)

    def _evaluate(self, network: MultiTaskUNet, config: TrainConfig) -> Payload:
        """The global model's quick metrics (:func:`gliofed.metrics.quick_metrics`: median Dice per region, AUC per
        marker) on the held-out cases; nothing per case leaves."""
        import math

        from gliofed.engine import predict
        from gliofed.metrics import quick_metrics

        predictions = predict(network, self.__held_out, device=config.device, progress=False, hd95=False)
        network.cpu()
        metrics = {k: (None if not math.isfinite(v) else min(max(float(v), 0.0), 1.0))
                   for k, v in quick_metrics(predictions).items()}
        return Payload("site_metrics", {}, {"site": self.name, "n_cases": self.n_held_out, "metrics": metrics})

    @staticmethod
    def _clip_and_noise(network: torch.nn.Module, before: dict, dp: DPSettings, seed: int) -> None:
        """Replace the update (every floating-point tensor of the state, BatchNorm statistics included) by the
        update clipped to ``dp.max_norm`` plus Gaussian noise of standard deviation ``noise_multiplier *
        max_norm`` (Flower's local DP mod does the same to a client's update). Noised BatchNorm variances are then
        clamped at 0 (post-processing costs no privacy): the server refuses a negative variance."""
        state = network.state_dict()
        names = [k for k, v in state.items() if v.is_floating_point()]
        update = torch.cat([(state[k] - before[k]).flatten().double() for k in names]).numpy()
        noised = gaussian_sum(update[None], dp.max_norm, dp.noise_multiplier, np.random.default_rng([seed, 30]))
        offset = 0
        with torch.no_grad():
            for k in names:
                size = state[k].numel()
                step = torch.from_numpy(noised[offset:offset + size]).reshape(state[k].shape).to(state[k].dtype)
                state[k].copy_(before[k] + step)
                if k.endswith(".running_var"):
                    state[k].clamp_(min=0.0)
                offset += size

    def audit_payload(self, payload: Payload, dp: DPSettings | None = None) -> pd.DataFrame:
        """The outgoing audit of every part of ``payload``, one row per part (per volume for synthetic volumes),
        with its pass/fail rule (:func:`gliofed.federated.site.privacy.payload_audit`); runs inside the site."""
        from gliofed.federated.site.privacy import payload_audit, volume_vectors

        real = labels = None
        if payload.kind == "distilled_set":
            grid = payload.arrays["syn_images"].shape[2:]
            real = np.concatenate([volume_vectors(self.__cases[i]["image"][None], grid)
                                   for i in range(len(self.__cases))])
            labels = self.__cases.labels
        spent = payload.meta.get("dp") if dp is not None and dp.enabled else None
        epsilon = (float(spent["epsilon_total"]), float(self.__policy.max_epsilon)) if spent else None
        return payload_audit(payload.arrays, payload.kind, real, labels, self.name, self.__policy.min_group,
                             self.__policy.audit_quantile, epsilon=epsilon,
                             dp_released=bool(spent) and spent.get("mechanism") == "gaussian")

    def _audit_outgoing(self, reply: Payload, dp: DPSettings) -> Payload:
        """Audit every part before it leaves: a synthetic volume that fails its rule is withheld (the site says so
        in one sentence, logged and in the reply's ``withheld``); any other part that fails, or every volume
        failing, stops the whole reply (:class:`PolicyError`). A teaching policy (``refuse_flagged=False``) sends
        flagged volumes anyway."""
        from gliofed.federated.site.privacy import outgoing_decision

        if not self.__policy.refuse_flagged:  # a teaching policy: everything leaves, so the audit can be shown
            return reply
        keep, sentence, refusal = outgoing_decision(self.name, reply.kind, self.audit_payload(reply, dp))
        if refusal:
            raise PolicyError(refusal)
        if sentence is None:
            return reply
        log.warning(sentence)
        arrays = dict(reply.arrays)
        for name in ("syn_images", "syn_masks", "syn_labels"):
            arrays[name] = np.ascontiguousarray(arrays[name][keep])
        withheld = len(reply.arrays["syn_images"]) - len(keep)
        return Payload(reply.kind, arrays, {**reply.meta, "withheld": int(withheld)})

    def privacy_audit(self, payload: Payload, quantile: float = 0.95):
        """Audit an outgoing ``distilled_set`` against this site's real volumes (runs inside the site;
        only the report — correlations and flags — leaves). See :mod:`gliofed.federated.site.privacy`."""
        from gliofed.federated.site.privacy import nearest_neighbour_audit, volume_vectors

        synthetic = payload.arrays["syn_images"].astype(np.float32)
        grid = synthetic.shape[2:]
        real, ids = [], []
        for i in range(len(self.__cases)):
            sample = self.__cases[i]
            real.append(volume_vectors(sample["image"][None], grid))
            ids.append(sample["subject"])
        report = nearest_neighbour_audit(synthetic.reshape(len(synthetic), -1), np.concatenate(real), ids,
                                         self.name, quantile)
        report["init"] = payload.meta.get("init", "")
        return report
