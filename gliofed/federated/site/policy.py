"""What a site agrees to do for a server: its operator's :class:`SitePolicy`.

A server (or anyone who can speak to a SuperNode) only *asks*; every request is checked against the policy the
site's operator set locally (Flower node config, or an argument in the simulator) before any case is read, and
every reply is checked again before it leaves: size, and for a distilled set the privacy audit
(:meth:`~gliofed.federated.site.Site.privacy_audit`). A refusal is a :class:`~gliofed.errors.PolicyError` whose
one-line message the server records as the reason the site sat the round out.

Node config keys (``flower-supernode --node-config 'site="a" cache="..." policy-min-scale=4'``), kebab-case of the
fields below with the prefix ``policy-``: ``policy-tasks`` ("describe,train,distill"), ``policy-min-scale``,
``policy-max-synthetic``, ``policy-max-bytes``, ``policy-allow-real-init``, ``policy-refuse-flagged``,
``policy-max-steps``, ``policy-max-real-batch``, ``policy-max-epochs``, ``policy-max-batch-size``,
``policy-max-workers``, ``policy-min-group``, ``policy-device``, ``policy-require-dp``, ``policy-max-epsilon``,
``policy-max-delta``.

>>> SitePolicy().violations("distill", {"distill": {"init": "real_unsafe", "scale": 1, "steps": 0}})[:1]
["initialisation 'real_unsafe' copies patients and this site's operator has not allowed it"]
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass

from gliofed.errors import ConfigError, PolicyError
from gliofed.federated.protocol import DistillSettings
from gliofed.vocab import TASKS

__all__ = ["SitePolicy", "PolicyError", "NODE_CONFIG_PREFIX"]

#: node config keys that set the policy start with this
NODE_CONFIG_PREFIX = "policy-"


#: DP mechanisms (:data:`gliofed.dp.MECHANISMS`) that apply to each task that releases something learnt
DP_MECHANISMS_BY_TASK = {"train": ("dp_sgd", "clipped_update"), "distill": ("gaussian",)}

#: initialisations of condensation that copy no patient
SAFE_INITS = ("class_stats", "noise")


@dataclass(frozen=True)
class SitePolicy:
    """Bounds a site's operator sets on what the site does for any server. The defaults let the shipped presets
    (tiny, workshop, paper) run unchanged and refuse what would copy patients or exhaust the site.

    Attributes:
        tasks: tasks the site accepts (default all: describe, train, distill).
        min_scale: smallest down-sampling factor of uploaded synthetic volumes (default 2; 1 = full resolution).
        max_synthetic: most synthetic volumes per reply (default 32).
        max_bytes: largest reply the site sends, and largest model it accepts, in bytes (default 64 MiB).
        allow_real_init: accept ``init="real_unsafe"`` (synthetic volumes started from real patients; default
            False). Only the operator can allow it, never the server's request.
        refuse_flagged: run the privacy audit on every distilled set and refuse to send it when any synthetic
            volume is flagged as a near-copy of a patient (default True).
        audit_quantile: the audit's real-to-real quantile (default 0.95).
        max_steps: most condensation steps per request (default 1000).
        max_real_batch: most real cases per condensation step (default 64).
        max_epochs: most local epochs per request (default 100).
        max_batch_size: largest training batch (default 64).
        max_workers: most DataLoader workers the request may start (default 4).
        min_group: fewest real cases any summary a distilled set carries may pool (default 3): the statistics and
            the label vector a synthetic volume starts from (a label vector fewer cases share is matched on fewer
            markers), each soft-label row and class-wise matching target (one fewer cases back is left out), and
            the BatchNorm statistics and matching targets as a whole, which average fixed, disjoint blocks of at
            least this many cases (so no two of them differ by fewer). A request's ``real_batch`` below it is
            refused, and so is any distillation at a site with fewer training cases. Not a request setting: the
            server cannot lower it. Must not exceed ``max_real_batch``.
        device: the device the site trains on, whatever the request says (default ``None``: the request's).
        require_dp: refuse every ``train`` and ``distill`` request that asks for no differential privacy (default
            False). A request's DP is its ``dp`` setting (:class:`~gliofed.dp.DPSettings`): DP-SGD or a clipped,
            noised update for ``train``, the Gaussian mechanism on the summaries for ``distill``.
        max_epsilon: the most privacy, in epsilon at the request's delta, this site spends over all the DP
            requests it answers (composed by its accountant); a request that would go past it is refused (default
            inf: no limit; set it with ``require_dp``).
        max_delta: the largest delta a DP request may use (default 1e-5).
    """

    tasks: tuple[str, ...] = TASKS
    min_scale: int = 2
    max_synthetic: int = 32
    max_bytes: int = 64 * 2**20
    allow_real_init: bool = False
    refuse_flagged: bool = True
    audit_quantile: float = 0.95
    max_steps: int = 1000
    max_real_batch: int = 64
    max_epochs: int = 100
    max_batch_size: int = 64
    max_workers: int = 4
    min_group: int = 3
    device: str | None = None
    require_dp: bool = False
    max_epsilon: float = math.inf
    max_delta: float = 1e-5

    def __post_init__(self) -> None:
        tasks = tuple(self.tasks.split(",")) if isinstance(self.tasks, str) else tuple(self.tasks)
        object.__setattr__(self, "tasks", tuple(t.strip() for t in tasks if t.strip()))
        unknown = [t for t in self.tasks if t not in TASKS]
        if unknown:
            raise ConfigError(f"site policy: unknown task(s) {', '.join(unknown)}; choose from {', '.join(TASKS)}.")
        for name in ("min_scale", "max_synthetic", "max_bytes", "max_real_batch", "max_epochs", "max_batch_size",
                     "min_group"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f"site policy: {name} must be a positive integer, not {getattr(self, name)!r}.")
        if self.min_group > self.max_real_batch:
            raise ConfigError(f"site policy: min_group ({self.min_group}) is above max_real_batch "
                              f"({self.max_real_batch}), so every distillation request would be refused.")
        if not isinstance(self.max_steps, int) or self.max_steps < 0 or self.max_workers < 0:
            raise ConfigError("site policy: max_steps and max_workers must be integers >= 0.")
        if isinstance(self.max_epsilon, bool) or not isinstance(self.max_epsilon, (int, float)) \
                or math.isnan(self.max_epsilon) or self.max_epsilon <= 0:
            raise ConfigError(f"site policy: max_epsilon must be a positive number (inf: no limit), not "
                              f"{self.max_epsilon!r}.")
        if isinstance(self.max_delta, bool) or not isinstance(self.max_delta, (int, float)) \
                or not 0 < self.max_delta < 1:
            raise ConfigError(f"site policy: max_delta must be in (0, 1), not {self.max_delta!r}.")
        if not 0 < self.audit_quantile <= 1:
            raise ConfigError(f"site policy: audit_quantile must be in (0, 1], not {self.audit_quantile!r}.")

    @classmethod
    def teaching(cls, **changes) -> SitePolicy:
        """A policy for a local teaching demo: ``real_unsafe`` allowed and flagged sets sent anyway, so that the
        privacy audit can be shown flagging them. Never for a site with real patients."""
        return cls(**{"allow_real_init": True, "refuse_flagged": False, **changes})

    @classmethod
    def from_node_config(cls, node_config: Mapping) -> SitePolicy:
        """The policy set by the ``policy-*`` keys of a Flower node config (defaults for the keys not given).

        Raises:
            ConfigError: an unknown ``policy-*`` key or a value of the wrong type.
        """
        fields = {f.name: f for f in dataclasses.fields(cls)}
        values = {}
        for key, value in node_config.items():
            if not str(key).startswith(NODE_CONFIG_PREFIX):
                continue
            name = str(key)[len(NODE_CONFIG_PREFIX):].replace("-", "_")
            if name not in fields:
                known = ", ".join(NODE_CONFIG_PREFIX + f.replace("_", "-") for f in fields)
                raise ConfigError(f"node config key {key!r} is not a site policy setting; known: {known}.")
            values[name] = _coerce(name, fields[name].default, value)
        return cls(**values)

    # requests -------------------------------------------------------------------------------------------------
    def violations(self, task: str, settings: Mapping, model_bytes: int = 0) -> list[str]:
        """Every way the request (``task``, its ``settings``, a model of ``model_bytes``) oversteps this policy;
        empty when the site may do it."""
        if task not in self.tasks:
            return [f"task {task!r} is not allowed (allowed: {', '.join(self.tasks) or 'none'})"]
        found = []
        if model_bytes > self.max_bytes:
            found.append(f"the model of {model_bytes:,} bytes exceeds the limit of {self.max_bytes:,} bytes")
        train = settings.get("train") or {}
        if task in ("train", "distill"):
            found += self._training_violations(task, settings, train)
        if task == "distill":
            found += self._distill_violations(settings.get("distill") or {})
        return found

    def _training_violations(self, task: str, settings: Mapping, train: Mapping) -> list[str]:
        found = []
        if task == "train":
            found += _bounded("epochs", settings.get("epochs", 1), 0, self.max_epochs)
            found += _bounded("mu", settings.get("mu", 0.0), 0.0, 1e3, integer=False)
            if not isinstance(settings.get("keep_optimizer", False), bool):
                found.append(f"keep_optimizer {settings['keep_optimizer']!r} is not true or false")
            found += _schedule_violations(settings.get("schedule"))
        found += _bounded("batch_size", train.get("batch_size", 1), 1, self.max_batch_size)
        found += _bounded("num_workers", train.get("num_workers", 0), 0, self.max_workers)
        found += _bounded("lr", train.get("lr", 1e-3), 0.0, 10.0, integer=False, open_low=True)
        return found

    def _distill_violations(self, distill: Mapping) -> list[str]:
        known = {f.name for f in dataclasses.fields(DistillSettings)}
        unknown = sorted(str(key) for key in distill if key not in known)
        # e.g. a server that sends "min_group": that bound is the operator's (``min_group`` above), not a setting
        found = [f"unknown distillation setting(s) {', '.join(unknown)}"] if unknown else []
        init = distill.get("init", "class_stats")
        if init not in SAFE_INITS and not (init == "real_unsafe" and self.allow_real_init):
            found.append(f"initialisation {init!r} copies patients and this site's operator has not allowed it"
                         if init == "real_unsafe" else f"initialisation {init!r} is unknown")
        found += _bounded("scale", distill.get("scale", 4), self.min_scale, 10_000)
        found += _bounded("n_synthetic", distill.get("n_synthetic", 3), 1, self.max_synthetic)
        found += _bounded("steps", distill.get("steps", 30), 0, self.max_steps)
        # BatchNorm statistics and matching targets average real_batch cases: never fewer than min_group
        found += _bounded("real_batch", distill.get("real_batch", 32), self.min_group, self.max_real_batch)
        found += _bounded("perturb", distill.get("perturb", 0.02), 0.0, 1.0, integer=False)
        found += _bounded("temperature", distill.get("temperature", 2.0), 0.05, 100.0, integer=False)
        found += _bounded("lr", distill.get("lr", 0.05), 0.0, 10.0, integer=False, open_low=True, label="distill lr")
        return found

    def check_request(self, site: str, task: str, settings: Mapping, model_bytes: int = 0) -> None:
        """Raise :class:`PolicyError` (one line naming the site and every violation) unless the request is allowed."""
        found = self.violations(task, settings, model_bytes)
        if found:
            raise PolicyError(f"site {site} refuses the {task!r} request: {'; '.join(found)}.")

    def privacy_violations(self, task: str, dp, epsilon_after: float | None) -> list[str]:
        """Every way a request's differential privacy (``dp``, a :class:`~gliofed.dp.DPSettings`) oversteps this
        policy, given the epsilon this site would have spent after answering it (``epsilon_after``; None when the
        request asks for no DP); empty when allowed. Only ``train`` and ``distill`` release anything learnt from the
        training cases; ``evaluate`` releases metrics of the held-out cases without noise, which a site that requires
        DP does not send."""
        if task == "evaluate" and self.require_dp:
            return ["this site requires differential privacy and federated evaluation releases its held-out cases' "
                    "metrics without it"]
        if task not in ("train", "distill"):
            return []
        if not dp.enabled:
            if self.require_dp:
                bound = f"at most epsilon {self.max_epsilon:g}" if math.isfinite(self.max_epsilon) else "any epsilon"
                return [f"this site requires differential privacy ({bound} at delta {self.max_delta:g}) and the "
                        f"request asks for none"]
            return []
        found = []
        allowed = DP_MECHANISMS_BY_TASK[task]
        if dp.mechanism not in allowed:
            found.append(f"DP mechanism {dp.mechanism!r} does not apply to a {task!r} request (use "
                         f"{' or '.join(repr(m) for m in allowed)})")
        if dp.delta > self.max_delta:
            found.append(f"DP delta {dp.delta:g} is above this site's maximum of {self.max_delta:g}")
        if epsilon_after is not None and epsilon_after > self.max_epsilon:
            found.append(f"it would bring the privacy this site has spent to epsilon {epsilon_after:.2f} at delta "
                         f"{dp.delta:g}, above its maximum of {self.max_epsilon:g}")
        return found

    def check_privacy(self, site: str, task: str, dp, epsilon_after: float | None) -> None:
        """Raise :class:`PolicyError` (one line naming the site and every violation) unless the request's
        differential privacy is allowed (:meth:`privacy_violations`)."""
        found = self.privacy_violations(task, dp, epsilon_after)
        if found:
            raise PolicyError(f"site {site} refuses the {task!r} request: {'; '.join(found)}.")

    def check_reply_size(self, site: str, nbytes: int) -> None:
        """Raise :class:`PolicyError` when a reply of ``nbytes`` would exceed :attr:`max_bytes`."""
        if nbytes > self.max_bytes:
            raise PolicyError(f"site {site} refuses to send a reply of {nbytes:,} bytes (its limit is "
                              f"{self.max_bytes:,} bytes).")


#: most rounds a request's schedule may name
MAX_ROUNDS = 1_000_000


def _schedule_violations(schedule) -> list[str]:
    """A ``train`` request's ``schedule`` (where the round stands in the run) must be ``{"round": r, "rounds": n}``
    with 1 <= r <= n, or absent."""
    if schedule is None:
        return []
    if not isinstance(schedule, Mapping) or set(schedule) != {"round", "rounds"}:
        return [f"schedule {str(schedule)[:60]!r} is not {{round, rounds}}"]
    found = _bounded("schedule rounds", schedule["rounds"], 1, MAX_ROUNDS)
    return found or _bounded("schedule round", schedule["round"], 1, schedule["rounds"])


def _coerce(name: str, default, value):
    """A node config value (TOML: str, int, float, bool) as the field's type."""
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("true", "false"):
            return str(value).lower() == "true"
        raise ConfigError(f"node config policy-{name.replace('_', '-')} must be true or false, not {value!r}.")
    if isinstance(default, int) and not isinstance(value, bool):
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = math.nan
        if not math.isfinite(number) or number != int(number):
            raise ConfigError(f"node config policy-{name.replace('_', '-')} must be an integer, not {value!r}.")
        return int(number)
    if isinstance(default, float):
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"node config policy-{name.replace('_', '-')} must be a number, not {value!r}.") from None
    return str(value)


def _bounded(name: str, value, low, high, integer: bool = True, open_low: bool = False,
             label: str | None = None) -> list[str]:
    """``[]`` when ``value`` is a number (an integer if ``integer``) in [low, high] ((low, high] if ``open_low``),
    else the one violation."""
    label = label or name
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return [f"{label} {value!r} is not a number"]
    if integer and (not math.isfinite(value) or value != int(value)):
        return [f"{label} {value!r} is not an integer"]
    if not math.isfinite(value):
        return [f"{label} {value!r} is not finite"]
    if value < low or (open_low and value <= low):
        return [f"{label} {value!r} is below this site's minimum of {low}"] if not open_low else [
            f"{label} {value!r} must be above {low}"]
    if value > high:
        return [f"{label} {value!r} exceeds this site's maximum of {high}"]
    return []
