"""Fault census (issues 14 and 29): one black-box probe per concrete sub-case of the seven classes of inputs gliofed
once handled badly, run against any checkout's code.

Usage::

    python benchmarks/fault_census.py                                  # this checkout
    python benchmarks/fault_census.py --tree /tmp/old --json old.json  # another checkout
    python benchmarks/fault_census.py --tree /tmp/old --tree . --labels d30a9a9,now \\
        --markdown benchmarks/results/fault_census.md                  # both, and the before/after table
    python benchmarks/fault_census.py --from-json old.json new.json --labels d30a9a9,now --markdown out.md

Every probe runs in a fresh subprocess of this interpreter (the venv's python) with ``PYTHONPATH=<tree>`` and a
temporary ``cwd``; each one first checks that ``gliofed.__file__`` lies inside the tree (exit 99 otherwise), so the
tree's own gliofed is what answers. Probes use the public surface both layouts share: the ``gliofed`` command
(``gliofed.cli.main``, the console script's entry point) and, for sites and replies, the Python API (``Site.handle``,
``federated_round``, the Flower ServerApp's ``flower_exchange``), trying the new import paths first and the
d30a9a9 ones after. Nothing trains for more than one round of the ``tiny`` synthetic cohort at 32 x 32 (16/24 for
the mixed-size probe); no Flower server is started.

"Handled well": refused with a clear error (non-zero exit, no traceback) before any work; for a site, the request
refused; for a reply, that site left out while the round goes on and the model equals what the honest site alone
gives; for files, written by rename from a temporary file, a damaged case detected (re-made or named); for a
checkpoint, its pickled code does not run. Class 7 (issue 29, "nothing lost, nothing poisoned"): nothing a command
was given is overwritten or lost; non-finite values are refused naming the subject, never written; a file's declared
size allocates nothing (peak RSS under 200 MB, children capped at 4 GB of address space so that a tree which believes
the header fails with MemoryError instead of taking the machine's memory); errors are one sentence.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NOBODY = 65534

CLASSES = {
    1: "The site obeys anything",
    2: "Replies are not validated as data",
    3: "Files half-exist",
    4: "Names become paths",
    5: "Nonsense is accepted, or refused too late",
    6: "Checkpoints execute code",
    7: "Nothing lost, nothing poisoned",
}

# ----------------------------------------------------------------------------------------------------------------
# scripts the probes run (each in a fresh subprocess, PYTHONPATH=<tree>)
# ----------------------------------------------------------------------------------------------------------------
PREAMBLE = r'''
import json, os, sys, warnings
warnings.simplefilter("ignore")
TREE = os.path.realpath(os.environ["CENSUS_TREE"])
import gliofed
if not os.path.realpath(gliofed.__file__).startswith(TREE + os.sep):
    print("census: wrong gliofed imported: " + gliofed.__file__, file=sys.stderr)
    sys.exit(99)

def emit(**values):
    print("CENSUS_RESULT " + json.dumps(values, default=str), flush=True)

def first_line(error):
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    return (type(error).__name__ + ": " + (lines[0] if lines else ""))[:200]
'''

#: the gliofed command under an optional audit hook that records writes and renames under a folder
RUNNER = PREAMBLE + r'''
log = os.environ.get("CENSUS_AUDIT")
if log:
    under = os.path.realpath(os.environ["CENSUS_AUDIT_UNDER"]) + os.sep
    sink = open(log, "a", buffering=1)

    def _path(value):
        if isinstance(value, (str, bytes, os.PathLike)):
            return os.path.realpath(os.fsdecode(value))
        return None

    def hook(event, args):
        if event == "open":
            path = _path(args[0])
            mode, flags = args[1], args[2]
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                mode is None and isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR))
            if path and writing and path.startswith(under):
                sink.write(json.dumps({"event": "open-write", "path": path}) + "\n")
        elif event == "os.rename":
            src, dst = _path(args[0]), _path(args[1])
            if dst and dst.startswith(under):
                sink.write(json.dumps({"event": "rename", "src": src, "dst": dst}) + "\n")

    sys.addaudithook(hook)
if os.environ.get("CENSUS_RSS"):
    import atexit, resource
    atexit.register(lambda: print(f"CENSUS_PEAK_RSS_KB {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}",
                                  file=sys.stderr, flush=True))
from gliofed.cli import main
sys.exit(main(sys.argv[1:]))
'''

IMPORT_CHECK = PREAMBLE + r'''
emit(file=gliofed.__file__)
'''

#: class 2: one honest site and one site whose reply is malformed in one way, through federated_round
REPLIES = PREAMBLE + r'''
import numpy as np
import torch
from gliofed.config import TrainConfig
from gliofed.model import build_model
try:  # the three rooms (issue 24), else the earlier layouts
    from gliofed.federated.protocol.payload import Payload, state_to_arrays
    from gliofed.federated.server.rounds import federated_round
    from gliofed.federated.server.strategies import make_strategy
except ImportError:
    from gliofed.federated.payload import Payload, state_to_arrays
    from gliofed.federated.rounds import federated_round
    try:
        from gliofed.federated.strategies import make_strategy
    except ImportError:
        from gliofed.federated.rounds import make_strategy

case = sys.argv[1]
torch.manual_seed(0)
config = TrainConfig(device="cpu")
model = build_model(config)
start = state_to_arrays(model)

def shifted(delta):
    return {k: (v + delta).astype(v.dtype) if v.dtype.kind == "f" else v.copy() for k, v in start.items()}

honest, bad = shifted(0.5), shifted(100.0)
bad_meta = {"site": "b_bad", "n_cases": 4, "loss": 1.0}
target = next(k for k, v in start.items() if v.dtype.kind == "f" and v.size > 1)
if case == "wrong_shape":
    bad[target] = bad[target].reshape(-1)[:1].copy()
elif case == "nan_complex":
    array = bad[target].astype(np.complex64)
    array.flat[0] = complex(float("nan"), 0.0)
    bad[target] = array
elif case == "missing_key":
    del bad[target]
elif case == "n_cases_nan":
    bad_meta["n_cases"] = float("nan")
elif case == "n_cases_negative":
    bad_meta["n_cases"] = -3
elif case == "n_cases_string":
    bad_meta["n_cases"] = "12"
elif case == "n_cases_huge":
    bad_meta["n_cases"] = 1e30
elif case == "negative_variance":  # issue 29: every BatchNorm running_var -50
    for key in bad:
        if key.endswith("running_var"):
            bad[key] = np.full_like(bad[key], -50.0)
elif case == "weights_1e30":  # issue 29: one weight tensor scaled to 1e30
    bad[target] = np.full_like(bad[target], 1e30)
elif case != "control":
    raise SystemExit("unknown case " + case)
replies = {"a_honest": Payload("weights_update", honest, {"site": "a_honest", "n_cases": 4, "loss": 1.0}),
           "b_bad": Payload("weights_update", bad, bad_meta)}

def exchange(requests):
    return {site: replies[site] for site in requests}

raised, excluded = None, None
try:
    result = federated_round(make_strategy("fedavg", 1), model, 1, ["a_honest", "b_bad"], config, exchange,
                             min_sites=1)
    excluded = result.excluded if hasattr(result, "excluded") else result[2]  # a RoundResult, or a 4-tuple before
except Exception as error:
    raised = first_line(error)
after = state_to_arrays(model)
expected = honest if case != "control" else shifted(50.25)  # control: both valid, equal weights
floats = [k for k, v in start.items() if v.dtype.kind == "f"]
finite = bool(all(np.isfinite(after[k]).all() for k in after if after[k].dtype.kind in "fc"))
deviation = float(np.max([np.max(np.abs(after[k].astype(np.float64) - expected[k].astype(np.float64)))
                          for k in floats]))
emit(raised=raised, excluded=excluded, finite=finite, deviation=deviation)
'''

#: class 2 (Flower) and class 5 (skip reason): the ServerApp's transport with a stand-in Grid, no server started
FLOWER = PREAMBLE + r'''
import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Error, Message, RecordDict
try:  # flwr >= 1.41 builds a Message only inside a run: play the ServerApp's run identity
    from flwr.supercore.task_identity import TaskIdentity
    for name in ("_run_id", "_node_id", "_task_id"):
        setattr(TaskIdentity, name, 1)
except ImportError:
    pass
from gliofed.config import TrainConfig
from gliofed.model import build_model
try:  # the three rooms (issue 24), else the earlier layouts
    from gliofed.federated.protocol.payload import Payload, state_to_arrays
    from gliofed.federated.protocol.records import payload_to_record
    from gliofed.federated.server.rounds import federated_round
    from gliofed.federated.server.server_app import flower_exchange
    from gliofed.federated.server.strategies import make_strategy
except ImportError:
    from gliofed.federated.payload import Payload, state_to_arrays
    from gliofed.federated.rounds import federated_round
    from gliofed.federated.flower.records import payload_to_record
    from gliofed.federated.flower.server_app import flower_exchange
    try:
        from gliofed.federated.strategies import make_strategy
    except ImportError:
        from gliofed.federated.rounds import make_strategy

case = sys.argv[1]
torch.manual_seed(0)
config = TrainConfig(device="cpu")
model = build_model(config)
start = state_to_arrays(model)
honest = {k: (v + 0.5).astype(v.dtype) if v.dtype.kind == "f" else v.copy() for k, v in start.items()}
honest_reply = Payload("weights_update", honest, {"site": "a_honest", "n_cases": 4, "loss": 1.0})

# a ClientApp that failed while handling another error: Flower's reason carries the remote traceback
frames = "".join(f'  File "/site/gliofed/federated/site/step_{i}.py", line {i}, in step_{i}\n    step_{i + 1}()\n'
                 for i in range(27))
REASON = ("<class 'RuntimeError'>:<'CUDA out of memory while condensing\nTraceback (most recent call last):\n"
          + frames + "RuntimeError: out of memory'>")

class Grid:
    def get_node_ids(self):
        return [1, 2]

    def send_and_receive(self, messages, timeout=None):
        out = []
        for message in messages:
            if message.metadata.dst_node_id == 1:
                out.append(Message(payload_to_record(honest_reply), reply_to=message))
            elif case == "malformed":
                content = RecordDict({"header": ConfigRecord({"kind": "weights_update", "meta": "{not json"}),
                                      "arrays": ArrayRecord()})
                out.append(Message(content, reply_to=message))
            else:
                out.append(Message(Error(code=2, reason=REASON), reply_to=message))
        return out

raised, excluded = None, None
try:
    exchange = flower_exchange(Grid(), {"a_honest": 1, "b_bad": 2}, 1, 5.0)
    result = federated_round(make_strategy("fedavg", 1), model, 1, ["a_honest", "b_bad"], config, exchange,
                             min_sites=1)
    excluded = result.excluded if hasattr(result, "excluded") else result[2]  # a RoundResult, or a 4-tuple before
except Exception as error:
    raised = first_line(error)
after = state_to_arrays(model)
deviation = float(np.max([np.max(np.abs(after[k].astype(np.float64) - honest[k].astype(np.float64)))
                          for k in start if start[k].dtype.kind == "f"]))
emit(raised=raised, excluded=excluded, deviation=deviation, reason_lines=REASON.count("\n") + 1)
'''

#: class 1: a server's distillation request that would upload full-resolution copies of patients
SITE = PREAMBLE + r'''
import dataclasses
import numpy as np
import torch
import torch.nn.functional as F
from gliofed.config import TrainConfig
from gliofed.data.dataset import CaseDataset
from gliofed.model import build_model
from gliofed.federated.site import Site
try:  # the three rooms (issue 24), else the earlier layouts
    from gliofed.federated.protocol import DistillSettings
    from gliofed.federated.protocol.payload import Payload, state_to_arrays, validate
except ImportError:
    from gliofed.federated.payload import Payload, state_to_arrays, validate
    try:
        from gliofed.federated.strategies.distill import DistillSettings
    except ImportError:
        from gliofed.federated.distill import DistillSettings

cache = sys.argv[1]
torch.manual_seed(0)
config = TrainConfig(device="cpu", augment=False)
model = build_model(config)
train = CaseDataset(cache, split="train", modalities=config.modalities, seed=0)
counts = train.index["site"].value_counts()
name = str(counts.index[0])
site = Site(name, cache, config.modalities, 0)
settings = {"train": config.to_dict(), "model_config": model.config, "seed": 0,
            "distill": dataclasses.asdict(DistillSettings(init="real_unsafe", scale=1, steps=0))}
outgoing = Payload("model", state_to_arrays(model), {"round": 1, "strategy": "distill"})
try:
    reply = site.handle("distill", outgoing, settings)
except Exception as error:
    emit(refused=first_line(error), site=name)
    raise SystemExit(0)
try:
    validate(reply)
    valid = "passes validate()"
except Exception as error:
    valid = "validate() refuses: " + first_line(error)
syn = torch.from_numpy(reply.arrays["syn_images"].astype(np.float32))
real = CaseDataset(cache, split="train", sites=[name], modalities=config.modalities, seed=0)
best, same_grid = -1.0, False
for i in range(len(real)):
    image = real[i]["image"].float()
    same_grid = same_grid or tuple(image.shape) == tuple(syn.shape[1:])
    resized = F.interpolate(image[None], size=tuple(syn.shape[2:]), mode="trilinear", align_corners=False)[0]
    for volume in syn:
        a, b = volume.flatten().double(), resized.flatten().double()
        best = max(best, float(torch.corrcoef(torch.stack([a, b]))[0, 1]))
emit(refused=None, site=name, shape=list(syn.shape), case_shape=list(real[0]["image"].shape), same_grid=same_grid,
     max_corr=best, valid=valid)
'''

#: class 6: a pickle whose unpickling creates a marker file
EVIL_CHECKPOINT = r'''
import builtins, sys
import torch

class Payload:
    def __reduce__(self):
        return (builtins.open, (sys.argv[2], "w"))

torch.save({"model": {}, "model_config": {}, "train_config": {}, "epoch": 0, "extra": {"x": Payload()}},
           sys.argv[1])
'''


# ----------------------------------------------------------------------------------------------------------------
# running things
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class Result:
    rc: int | None
    out: str
    err: str
    wall: float
    killed: str | None = None  # "matched" (the probe stopped it on a line) or "timeout"

    @property
    def traceback(self) -> bool:
        return "Traceback (most recent call last)" in self.err

    def data(self) -> dict:
        for line in reversed(self.out.splitlines()):
            if line.startswith("CENSUS_RESULT "):
                return json.loads(line[len("CENSUS_RESULT "):])
        raise ProbeError(f"no result from the probe script (exit {self.rc}): {err_line(self.err)}")


class ProbeError(Exception):
    """The probe itself could not run (a defect of the probe or of its setup, not a finding)."""


_BAR = re.compile(r"\d+%\||\d+/\d+ \[|it/s|s/it|case/s|round/s")


def _lines(text: str) -> list[str]:
    return [line.strip() for line in re.split(r"[\r\n]+", text) if line.strip()]


def err_line(err: str) -> str:
    """The telling line of stderr: the exception of a traceback, else gliofed's or argparse's error line, else the
    first line that is not a progress bar or a warning."""
    lines = [line for line in _lines(err) if not _BAR.search(line)]
    if "Traceback (most recent call last)" in err:
        tail = [line for line in lines if not line.startswith(("File ", "^", "~"))]
        return "traceback: " + (tail[-1] if tail else "?")
    for line in lines:
        if line.startswith(("gliofed", "usage:", "error")):
            return line
    quiet = [line for line in lines if "Warning" not in line and not line.startswith("warnings.warn")]
    return (quiet or lines or [""])[0]


def short(text: str, limit: int = 170) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def described(res: Result) -> str:
    if res.killed == "timeout":
        return f"timed out after {res.wall:.0f} s"
    line = err_line(res.err)
    return f"exit {res.rc} after {res.wall:.1f} s" + (f"; {line}" if line else "")


#: the line both trees' ``train`` prints once the arguments are accepted and the work starts
ANNOUNCE = r"^\w+: -?\d+ rounds x -?\d+ local epoch"


def announced(res: Result) -> re.Match | None:
    return re.search(ANNOUNCE, res.out, re.MULTILINE)


def refused_early(res: Result) -> bool:
    """A clear refusal before the work: non-zero exit, no traceback, no training announced, not killed."""
    return res.killed is None and res.rc not in (0, None) and not res.traceback and not announced(res)


@dataclass
class Census:
    tree: Path
    python: str
    work: Path
    timings: dict = field(default_factory=dict)
    setup: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, text in (("runner.py", RUNNER), ("import_check.py", IMPORT_CHECK), ("replies.py", REPLIES),
                           ("flower.py", FLOWER), ("site.py", SITE), ("evil_checkpoint.py", EVIL_CHECKPOINT),
                           ("variants.py", CHECKPOINT_VARIANTS), ("memory_error.py", MEMORY_ERROR),
                           ("disk_full.py", DISK_FULL), ("extreme.py", EXTREME), ("finite.py", FINITE)):
            (self.work / name).write_text(text)
        os.chmod(self.work, 0o755)

    # -- subprocesses -------------------------------------------------------------------------------------------
    def env(self, **extra) -> dict:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
        env.update(PYTHONPATH=str(self.tree), CENSUS_TREE=str(self.tree), PYTHONUNBUFFERED="1",
                   PYTHONDONTWRITEBYTECODE="1", TQDM_DISABLE="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
                   FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1")
        env.update(extra)
        return env

    def run(self, argv: list[str], timeout: float = 300, kill_on: str | None = None, as_nobody: bool = False,
            env: dict | None = None, cap_gb: float | None = None) -> Result:
        """``python argv`` in a fresh process, cwd a new temporary folder; stopped when stdout matches ``kill_on``;
        with ``cap_gb`` its address space is capped (a tree that allocates what a header declares fails instead)."""
        cwd = Path(tempfile.mkdtemp(prefix="cwd_", dir=self.work))
        command = [self.python, *argv]
        environment = self.env(**(env or {}))
        if as_nobody:
            os.chown(cwd, NOBODY, NOBODY)
            command = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *command]
            environment.update(HOME=str(cwd), XDG_CACHE_HOME=str(cwd), MPLCONFIGDIR=str(cwd))
        started = time.monotonic()
        def cap() -> None:
            import resource

            limit = int(cap_gb * 2**30)
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

        process = subprocess.Popen(command, cwd=cwd, env=environment, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True, errors="replace",
                                   preexec_fn=cap if cap_gb else None)
        out, err, matched = [], [], threading.Event()

        def pump(stream, sink, watch):
            for line in stream:
                sink.append(line)
                if watch and kill_on and re.search(kill_on, line):
                    matched.set()

        threads = [threading.Thread(target=pump, args=(process.stdout, out, True), daemon=True),
                   threading.Thread(target=pump, args=(process.stderr, err, False), daemon=True)]
        for thread in threads:
            thread.start()
        killed = None
        while process.poll() is None:
            if matched.is_set():
                killed = "matched"
                process.send_signal(signal.SIGINT)
                break
            if time.monotonic() - started > timeout:
                killed = "timeout"
                process.kill()
                break
            time.sleep(0.05)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        for thread in threads:
            thread.join(timeout=5)
        return Result(process.returncode, "".join(out), "".join(err), time.monotonic() - started, killed)

    def cli(self, *args: str, **kw) -> Result:
        return self.run([str(self.work / "runner.py"), *map(str, args)], **kw)

    def script(self, name: str, *args: str, timeout: float = 300) -> dict:
        res = self.run([str(self.work / name), *map(str, args)], timeout=timeout)
        if res.rc == 99:
            raise ProbeError(err_line(res.err))
        return res.data()

    # -- shared material (one cohort, one cache, one trained run per tree) --------------------------------------
    def prepare(self) -> None:
        data = self.script("import_check.py")
        if not os.path.realpath(data["file"]).startswith(os.path.realpath(self.tree) + os.sep):
            raise ProbeError(f"gliofed imported from {data['file']}, not from {self.tree}")
        self.setup["gliofed_file"] = data["file"]
        self.cohort = self.work / "cohort"
        res = self.cli("synth", "--preset", "tiny", "--out", self.cohort, timeout=300)
        if res.rc != 0:
            raise ProbeError(f"gliofed synth failed: {described(res)}")
        self.manifest = self.cohort / "manifest.csv"
        with self.manifest.open(newline="") as handle:
            reader = csv.DictReader(handle)
            self.columns, rows = reader.fieldnames, list(reader)
        for row in rows:  # absolute paths: probe manifests live elsewhere
            for key in ("t1", "t1ce", "t2", "flair", "seg"):
                if row.get(key):
                    row[key] = str((self.cohort / row[key]).resolve())
        self.rows = rows
        self.cache = self.work / "cache32"
        self.index_audit = self.work / "audit_preprocess.jsonl"
        res = self.cli("preprocess", self.manifest, "--cache", self.cache, "--size", "32", timeout=300,
                       env={"CENSUS_AUDIT": str(self.index_audit), "CENSUS_AUDIT_UNDER": str(self.cache)})
        self.setup["preprocess"] = described(res)
        if res.rc != 0:
            raise ProbeError(f"gliofed preprocess failed: {described(res)}")
        self.base = self.work / "base_run"
        self.state_audit = self.work / "audit_train.jsonl"
        res = self.cli(*self.train_args(self.base), timeout=400,
                       env={"CENSUS_AUDIT": str(self.state_audit), "CENSUS_AUDIT_UNDER": str(self.base)})
        self.setup["base_train"] = described(res)
        self.setup["base_train_wall_s"] = round(res.wall, 1)
        if res.rc != 0:
            raise ProbeError(f"the one-round base run failed: {described(res)}")

    def train_args(self, out: Path, *extra: str, manifest: Path | None = None, cache: Path | None = None,
                   size: str = "32") -> list[str]:
        args = ["train", manifest or self.manifest, "--cache", cache or self.cache, "--size", size,
                "--strategy", "fedavg", "--rounds", "1", "--preset", "tiny", "--seed", "0", "--out", out]
        extra = list(extra)
        for flag in ("--strategy", "--rounds", "--seed", "--size"):  # an override replaces the default
            if flag in extra:
                position = args.index(flag)
                del args[position:position + 2]
        return [*map(str, args), *extra]

    def variants(self) -> dict:
        """Checkpoints made from the base run's model by the tree's own code (class 7): ``nan`` (one NaN weight),
        ``heads`` (an IDH head of three classes); made once."""
        if "variants" not in self.setup:
            folder = self.work / "variants"
            self.setup["variants"] = self.script("variants.py", _checkpoint_of(self.base), folder)
        return self.setup["variants"]

    def write_manifest(self, path: Path, rows: list[dict]) -> Path:
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=self.columns)
            writer.writeheader()
            writer.writerows(rows)
        return path

    def fresh(self, name: str) -> Path:
        folder = self.work / name
        folder.mkdir(parents=True, exist_ok=False)
        return folder

    def index_rows(self, cache: Path) -> list[dict]:
        with (cache / "index.csv").open(newline="") as handle:
            return list(csv.DictReader(handle))


# ----------------------------------------------------------------------------------------------------------------
# the probes
# ----------------------------------------------------------------------------------------------------------------
PROBES: list[tuple[int, str, str, Callable]] = []


def probe(klass: int, key: str, title: str):
    def register(function):
        PROBES.append((klass, key, title, function))
        return function
    return register


def _npy_shape(path: Path):
    import numpy as np  # the parent reads file headers only; the tree's code runs in the subprocesses

    try:
        return tuple(np.load(path, mmap_mode="r").shape)
    except Exception as error:
        return f"unreadable ({type(error).__name__})"


# class 1 -------------------------------------------------------------------------------------------------------
@probe(1, "1a", "server asks init=real_unsafe, scale=1, steps=0 (full-resolution copies of patients)")
def site_obeys(c: Census):
    data = c.script("site.py", c.cache)
    if data["refused"]:
        ok = any(word in data["refused"] for word in ("real_unsafe", "scale"))
        return ok, f"site {data['site']} refuses: {data['refused']}"
    return False, (f"site {data['site']} uploaded syn_images {data['shape']} (cached case {data['case_shape']}); "
                   f"max correlation with one of its real patients {data['max_corr']:.4f}; payload {data['valid']}")


# class 2 -------------------------------------------------------------------------------------------------------
def _reply(c: Census, case: str, what: str):
    data = c.script("replies.py", case)
    excluded = data["excluded"] or {}
    ok = data["raised"] is None and "b_bad" in excluded and data["finite"] and data["deviation"] <= 1e-6
    if data["raised"]:
        return ok, f"{what}: the whole round raised {data['raised']}"
    if "b_bad" in excluded:
        text = f"site left out: {excluded['b_bad']}"
        return ok, text if ok else text + f"; yet model off the honest one by {data['deviation']:.3g}"
    state = "NaN/Inf in the global model" if not data["finite"] else (
        f"global model moved {data['deviation']:.3g} off the honest site's weights")
    return ok, f"{what}: reply accepted, {state}"


def _control(c: Census) -> str:
    data = c.script("replies.py", "control")
    fine = data["raised"] is None and not data["excluded"] and data["deviation"] <= 1e-3
    if not fine:
        raise ProbeError(f"the control (two valid replies) misbehaves: {data}")
    return "control ok"


@probe(2, "2a", "a weight with the wrong shape")
def wrong_shape(c: Census):
    _control(c)
    return _reply(c, "wrong_shape", "weight of shape (1,)")


@probe(2, "2b", "NaN hidden in a non-float dtype (complex64 weight)")
def nan_complex(c: Census):
    return _reply(c, "nan_complex", "complex64 weight with NaN")


@probe(2, "2c", "a missing weight key")
def missing_key(c: Census):
    return _reply(c, "missing_key", "one w: key missing")


@probe(2, "2d", "n_cases = NaN")
def n_cases_nan(c: Census):
    return _reply(c, "n_cases_nan", "n_cases NaN")


@probe(2, "2e", "n_cases negative (-3)")
def n_cases_negative(c: Census):
    return _reply(c, "n_cases_negative", "n_cases -3")


@probe(2, "2f", "n_cases a string (\"12\")")
def n_cases_string(c: Census):
    return _reply(c, "n_cases_string", "n_cases '12'")


@probe(2, "2g", "n_cases = 1e30")
def n_cases_huge(c: Census):
    return _reply(c, "n_cases_huge", "n_cases 1e30")


@probe(2, "2h", "over Flower, a reply that does not decode (unit level: ServerApp's flower_exchange + round)")
def flower_malformed(c: Census):
    data = c.script("flower.py", "malformed")
    excluded = data["excluded"] or {}
    ok = data["raised"] is None and "b_bad" in excluded and data["deviation"] <= 1e-6
    if data["raised"]:
        return ok, f"the server's round raised {data['raised']}"
    return ok, f"round went on; site left out: {excluded.get('b_bad')}; model off honest by {data['deviation']:.3g}"


# class 3 -------------------------------------------------------------------------------------------------------
def _arrival(log: Path, target: Path) -> tuple[bool, str]:
    """Did ``target`` arrive by a rename from another file, and was it never opened for writing in place?"""
    events = [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []
    target = os.path.realpath(target)
    renames = [e for e in events if e["event"] == "rename" and e["dst"] == target]
    in_place = [e for e in events if e["event"] == "open-write" and e["path"] == target]
    name = Path(target).name
    if in_place:
        return False, f"{name} opened for writing in place ({len(in_place)}x)"
    if renames:
        return True, f"{name} renamed from {Path(renames[-1]['src']).name}"
    return False, f"{name} appeared with no rename onto it (written in place by its writer)"


@probe(3, "3a", "the round state (state.pt / state.safetensors) is written atomically")
def state_atomic(c: Census):
    states = sorted(p for p in c.base.iterdir() if p.name.startswith("state.") and not p.name.endswith(".tmp"))
    if not states:
        raise ProbeError(f"no state file in {c.base}")
    verdicts = [_arrival(c.state_audit, p) for p in states]
    return all(ok for ok, _ in verdicts), "; ".join(text for _, text in verdicts) + " (audit hook on train)"


@probe(3, "3b", "the cache's index.csv is written atomically")
def index_atomic(c: Census):
    ok, text = _arrival(c.index_audit, c.cache / "index.csv")
    return ok, text + " (audit hook on preprocess)"


def _damaged_cache(c: Census, name: str, split: str) -> tuple[Path, str, Path, tuple]:
    copy = c.work / name
    shutil.copytree(c.cache, copy)
    row = next(r for r in c.index_rows(copy) if r["site"] == "brats21" and r["split"] == split)
    path = copy / "cases" / f"{row['subject_id']}.image.npy"
    shape = _npy_shape(path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return copy, row["subject_id"], path, shape


@probe(3, "3c", "a truncated cached case, then preprocess (must not say 'up to date')")
def truncated_preprocess(c: Census):
    cache, subject, path, shape = _damaged_cache(c, "cache_truncated_pp", "train")
    res = c.cli("preprocess", c.manifest, "--cache", cache, "--size", "32", timeout=300)
    summary = next((line for line in _lines(res.out) if "up to date" in line), "")
    restored = _npy_shape(path) == shape
    named = res.rc not in (0, None) and subject in res.err and not res.traceback
    evidence = f"exit {res.rc}: {short(summary or err_line(res.err), 110)}; {subject} " + (
        "re-made" if restored else f"still {_npy_shape(path)}")
    return restored or named, evidence


def _sites_left_out(out: Path) -> dict:
    path = out / "history_sites.csv"
    if not path.is_file():
        return {}
    with path.open(newline="") as handle:
        return {r["site"]: r["excluded"] for r in csv.DictReader(handle) if r.get("excluded")}


def _truncated_train(c: Census, split: str, name: str):
    cache, subject, path, shape = _damaged_cache(c, name, split)
    out = c.work / f"{name}_run"
    res = c.cli(*c.train_args(out, cache=cache), timeout=400)
    left_out = _sites_left_out(out)
    restored = _npy_shape(path) == shape
    if res.rc == 0:
        if left_out:
            site, reason = next(iter(left_out.items()))
            return False, f"exit 0; site {site} silently left out: {short(reason, 110)}"
        return restored, f"exit 0, every site answered; {subject} {'re-made first' if restored else 'NOT re-made'}"
    clear = not res.traceback and subject in res.err
    return clear, described(res) + ("" if announced(res) is None else " (after training started)")


@probe(3, "3d", "a truncated cached TRAINING case, then train (site dropped silently?)")
def truncated_train_case(c: Census):
    return _truncated_train(c, "train", "cache_truncated_train")


@probe(3, "3e", "a truncated cached TEST case, then train (crash after a full round?)")
def truncated_test_case(c: Census):
    return _truncated_train(c, "test", "cache_truncated_test")


def _sizes(cache: Path) -> dict:
    sizes: dict = {}
    for path in (cache / "cases").glob("*.image.npy"):
        shape = _npy_shape(path)
        key = shape[-1] if isinstance(shape, tuple) else shape
        sizes[key] = sizes.get(key, 0) + 1
    return sizes


@probe(3, "3f", "preprocess --size 16, then --size 24 into the same cache (interrupted after 3 cases), then train")
def mixed_sizes(c: Census):
    cache = c.work / "cache_mixed"
    res = c.cli("preprocess", c.manifest, "--cache", cache, "--size", "16", timeout=300)
    if res.rc != 0:
        raise ProbeError(f"first preprocess failed: {described(res)}")
    cwd = Path(tempfile.mkdtemp(prefix="cwd_", dir=c.work))
    process = subprocess.Popen([c.python, str(c.work / "runner.py"), "preprocess", str(c.manifest), "--cache",
                                str(cache), "--size", "24"], cwd=cwd, env=c.env(), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    started, interrupted = time.monotonic(), False
    while process.poll() is None and time.monotonic() - started < 300:
        if _sizes(cache).get(24, 0) >= 3:
            process.send_signal(signal.SIGINT)
            interrupted = True
            break
        time.sleep(0.05)
    out, err = process.communicate(timeout=60)
    second = Result(process.returncode, out, err, time.monotonic() - started)
    sizes = _sizes(cache)
    if not interrupted and second.rc not in (0, None) and not second.traceback and set(sizes) == {16}:
        return True, f"second preprocess refused: {described(second)}; cache stays all 16 x 16"
    state = f"second preprocess {'interrupted' if interrupted else described(second)}; case sizes {sizes}"
    if len(sizes) <= 1:
        return True, state + " (one size)"
    res = c.cli(*c.train_args(c.work / "mixed_run", cache=cache, size="16"), timeout=400)
    if refused_early(res) or (res.rc not in (0, None) and not res.traceback):
        return True, state + f"; train: {described(res)}"
    return False, state + f"; train on it: {described(res)}"


# class 4 -------------------------------------------------------------------------------------------------------
def _renamed(c: Census, new_id: str, limit: int | None = None) -> list[dict]:
    rows = [dict(r) for r in c.rows]
    index = next(i for i, r in enumerate(rows) if r["subject_id"] == "brats21_0002")
    rows[index]["subject_id"] = new_id
    if limit:
        rows = [rows[index]] + [r for r in rows if r is not rows[index]][: limit - 1]
    return rows


def _check_probe(c: Census, new_id: str, name: str):
    if "check_control" not in c.setup:
        res = c.cli("check", c.manifest, timeout=300)
        c.setup["check_control"] = described(res)
        if res.rc != 0:
            raise ProbeError(f"check fails on the unmodified cohort: {described(res)}")
    manifest = c.write_manifest(c.work / f"{name}.csv", _renamed(c, new_id))
    res = c.cli("check", manifest, timeout=300)
    mention = next((line for line in _lines(res.out + "\n" + res.err) if new_id in line), "")
    ok = res.rc not in (0, None) and not res.traceback and bool(mention)
    return ok, f"exit {res.rc} (unmodified cohort: exit 0)" + (f"; {short(mention, 120)}" if mention else
                                                              "; the name is not reported")


@probe(4, "4a", "check: subject_id '../../x'")
def check_relative(c: Census):
    return _check_probe(c, "../../x", "manifest_relative")


@probe(4, "4b", "check: subject_id '/abs/x' (an absolute path)")
def check_absolute(c: Census):
    target = c.fresh("abs_target_check")
    return _check_probe(c, f"{target}/x", "manifest_absolute")


def _tree_state(root: Path, skip: Path) -> dict:
    state = {}
    for path in root.rglob("*"):
        if path.is_file() and skip not in path.parents:
            st = path.stat()
            state[str(path)] = (st.st_size, st.st_mtime_ns)
    return state


def _preprocess_escape(c: Census, relative: bool, name: str):
    """A two-case manifest whose first subject_id points out of the cache, at a folder that exists and holds a file
    of the very name the case would get (``x.image.npy``): it must be neither written nor removed."""
    root = c.fresh(name)
    cache = root / "deep" / "cache"
    target = root / "deep" if relative else root / "elsewhere"  # where cache/cases/<subject_id> would land
    target.mkdir(parents=True, exist_ok=True)
    (target / "x.image.npy").write_text("a file that must survive")
    new_id = "../../x" if relative else f"{target}/x"
    manifest = c.write_manifest(c.work / f"{name}.csv", _renamed(c, new_id, limit=2))
    before = _tree_state(root, cache)
    res = c.cli("preprocess", manifest, "--cache", cache, "--size", "32", timeout=300)
    after = _tree_state(root, cache)
    added = sorted(set(after) - set(before))
    modified = sorted(p for p in before if p in after and before[p] != after[p])
    removed = sorted(set(before) - set(after))
    if added or modified or removed:
        parts = [f"{what} {', '.join(os.path.relpath(p, root) for p in paths[:2])}"
                 for what, paths in (("wrote", added), ("overwrote", modified), ("removed", removed)) if paths]
        return False, f"exit {res.rc}; outside the cache it " + "; ".join(parts)
    ok = res.rc not in (0, None) and not res.traceback
    return ok, f"nothing outside the cache touched; {described(res)}"


@probe(4, "4c", "preprocess: subject_id '../../x' (writes outside the cache?)")
def preprocess_relative(c: Census):
    return _preprocess_escape(c, True, "escape_relative")


@probe(4, "4d", "preprocess: subject_id '/abs/x' (writes outside the cache?)")
def preprocess_absolute(c: Census):
    return _preprocess_escape(c, False, "escape_absolute")


# class 5 -------------------------------------------------------------------------------------------------------
def _train_refused(c: Census, name: str, *extra: str, timeout: float = 400, stop_at_announce: bool = False,
                   must_mention: str | None = None, **kw):
    res = c.cli(*c.train_args(c.work / name, *extra), timeout=timeout,
                kill_on=ANNOUNCE if stop_at_announce else None, **kw)
    ok = refused_early(res) and (must_mention is None or must_mention in res.err)
    line = announced(res)
    if res.killed == "matched":
        return ok, f"accepted: printed '{line.group(0)}...' and started training (stopped by the probe)"
    text = described(res)
    if line and res.rc == 0:
        text = f"exit 0, trained: '{line.group(0)}...' ({res.wall:.0f} s)"
    elif line:
        text += f" (after '{line.group(0)}...': training ran first)"
    return ok, text


@probe(5, "5a", "train --rounds 0")
def rounds_zero(c: Census):
    return _train_refused(c, "rounds0", "--rounds", "0", stop_at_announce=True)


def _size_probe(c: Census, value: str, name: str):
    cache = c.work / name
    res = c.cli("preprocess", c.manifest, "--cache", cache, "--size", value, timeout=300)
    written = _sizes(cache) if (cache / "cases").is_dir() else {}
    ok = res.rc not in (0, None) and not res.traceback and not written
    text = described(res) if res.rc != 0 else f"exit 0; {short(next(iter(_lines(res.out)), ''), 80)}"
    return ok, text + (f"; cached in-plane sizes {written}" if written else "")


@probe(5, "5b", "preprocess --size 0")
def size_zero(c: Census):
    return _size_probe(c, "0", "cache_size0")


@probe(5, "5c", "preprocess --size -8")
def size_negative(c: Census):
    return _size_probe(c, "-8", "cache_size_negative")


@probe(5, "5d", "train --local-epochs -1")
def local_epochs_negative(c: Census):
    return _train_refused(c, "local_epochs", "--local-epochs", "-1")


@probe(5, "5e", "train --min-sites 99 (more than the 5 sites)")
def min_sites(c: Census):
    return _train_refused(c, "min_sites", "--min-sites", "99")


@probe(5, "5f", "train --out FILE (a file, not a folder)")
def out_is_file(c: Census):
    target = c.work / "out_is_a_file"
    target.write_text("not a folder")
    res = c.cli(*c.train_args(target), timeout=400)
    ok = refused_early(res)
    return ok, described(res) + (" (after training)" if announced(res) else "")


@probe(5, "5g", "train --out READ-ONLY folder")
def out_read_only(c: Census):
    root = c.fresh("read_only")
    cache = root / "cache"
    shutil.copytree(c.cache, cache)
    out = root / "out"
    out.mkdir()
    as_nobody = os.geteuid() == 0  # root writes anywhere: run this one probe as nobody
    if as_nobody:
        if shutil.which("setpriv") is None:
            return None, "not probed: running as root and setpriv is missing, so no folder is read-only"
        for path in [root, *root.rglob("*")]:
            os.chown(path, NOBODY, NOBODY)
    os.chmod(out, 0o555)
    res = c.cli(*c.train_args(out, cache=cache), timeout=400, as_nobody=as_nobody)
    os.chmod(out, 0o755)
    ok = refused_early(res)
    who = " (as user nobody)" if as_nobody else ""
    return ok, described(res) + (" (after training)" if announced(res) else "") + who


@probe(5, "5h", "an empty manifest (header only) to check, preprocess and train")
def empty_manifest(c: Census):
    manifest = c.write_manifest(c.work / "empty.csv", [])
    results = {
        "check": c.cli("check", manifest, timeout=200),
        "preprocess": c.cli("preprocess", manifest, "--cache", c.work / "cache_empty", "--size", "32", timeout=200),
        "train": c.cli(*c.train_args(c.work / "empty_run", manifest=manifest, cache=c.work / "cache_empty2"),
                       timeout=300),
    }
    ok = all(r.rc not in (0, None) and not r.traceback and r.killed is None for r in results.values())
    return ok, "; ".join(f"{k}: exit {r.rc}, {short(err_line(r.err) or 'no error', 70)}" for k, r in results.items())


@probe(5, "5i", "train --device gpu")
def device_gpu(c: Census):
    return _train_refused(c, "device_gpu", "--device", "gpu")


def _checkpoint_of(run: Path) -> Path:
    for name in ("model.safetensors", "model.ckpt"):
        if (run / name).is_file():
            return run / name
    raise ProbeError(f"no checkpoint in {run}")


@probe(5, "5j", "evaluate --bootstrap 0")
def bootstrap_zero(c: Census):
    res = c.cli("evaluate", _checkpoint_of(c.base), c.manifest, "--cache", c.cache, "--size", "32", "--bootstrap",
                "0", "--out", c.work / "evaluate_b0", timeout=300)
    ok = res.killed is None and not res.traceback and res.rc is not None  # works, or a clear refusal
    if res.rc == 0:
        last = next((line for line in reversed(_lines(res.out)) if line.startswith("wrote")), "")
        return ok, f"exit 0 ({res.wall:.0f} s): {short(last, 100)}"
    return ok, described(res)


def _resume(c: Census, name: str, *extra: str, mention: str):
    run = c.work / name
    shutil.copytree(c.base, run)
    res = c.cli(*c.train_args(run, "--rounds", "2", "--resume", *extra), timeout=400)
    ok = refused_early(res) and mention in res.err
    if res.rc == 0:
        with (run / "history.csv").open(newline="") as handle:
            rounds = len(list(csv.DictReader(handle)))
        return False, f"exit 0: continued silently ({rounds} rounds in history.csv, {res.wall:.0f} s)"
    return ok, described(res)


@probe(5, "5k", "resume with another strategy (fedavg run, --strategy fedprox --resume)")
def resume_strategy(c: Census):
    return _resume(c, "resume_strategy", "--strategy", "fedprox", mention="fedprox")


@probe(5, "5l", "resume with another seed (--seed 1 --resume)")
def resume_seed(c: Census):
    return _resume(c, "resume_seed", "--seed", "1", mention="seed")


@probe(5, "5m", "resume with another learning rate (--lr 0.01 --resume)")
def resume_lr(c: Census):
    return _resume(c, "resume_lr", "--lr", "0.01", mention="lr")


@probe(5, "5n", "skip reason from a 57-line remote traceback (unit level: flower_exchange + round)")
def skip_reason(c: Census):
    data = c.script("flower.py", "traceback57")
    excluded = data["excluded"] or {}
    if data["raised"]:
        return False, f"the round raised {data['raised']}"
    reason = excluded.get("b_bad")
    if reason is None:
        raise ProbeError(f"the failing site was not left out: {data}")
    lines = reason.count("\n") + 1
    ok = lines == 1 and len(reason) <= 300
    return ok, f"{data['reason_lines']}-line error -> a {lines}-line, {len(reason)}-character reason: " + short(
        reason.splitlines()[0], 90)


# class 6 -------------------------------------------------------------------------------------------------------
@probe(6, "6a", "evaluate a crafted model.ckpt whose pickle runs code")
def evil_checkpoint(c: Census):
    folder = c.fresh("evil")
    checkpoint, marker = folder / "model.ckpt", folder / "CODE_RAN"
    res = c.run([str(c.work / "evil_checkpoint.py"), str(checkpoint), str(marker)], timeout=120)
    if res.rc != 0 or not checkpoint.is_file():
        raise ProbeError(f"could not write the crafted checkpoint: {described(res)}")
    res = c.cli("evaluate", checkpoint, c.manifest, "--cache", c.cache, "--size", "32", "--bootstrap", "10",
                "--out", folder / "evaluate", timeout=300)
    ran = marker.exists()
    return not ran, ("the pickle's code RAN (marker file created); " if ran else "marker not created; ") + described(
        res)


# class 7 -------------------------------------------------------------------------------------------------------
#: scripts of class 7, run in the tree under test
CHECKPOINT_VARIANTS = PREAMBLE + r'''
import shutil
from pathlib import Path
import torch
from safetensors.torch import load_file, save_file
from gliofed.config import TrainConfig
from gliofed.model import build_model
from gliofed.runs import save_checkpoint

base, out = Path(sys.argv[1]), Path(sys.argv[2])
def copy(name):
    folder = out / name
    folder.mkdir(parents=True)
    for suffix in (".safetensors", ".json"):
        shutil.copy(base.with_suffix(suffix), folder / ("model" + suffix))
    return folder / "model.safetensors"

weights = copy("nan")  # one weight NaN
tensors = load_file(str(weights))
key = next(k for k, v in tensors.items() if v.is_floating_point() and v.numel() > 1)
tensors[key][0] = float("nan")
save_file(tensors, str(weights), metadata={"gliofed": "checkpoint"})
settings = json.loads(base.with_suffix(".json").read_text())
config = TrainConfig.from_dict(settings["train_config"])
heads = {"idh": 3, "codeletion": 2, "mgmt": 2, "grade": 3}  # an IDH head with three classes
model = build_model({**settings["model_config"], "heads": heads})
(out / "heads").mkdir()
save_checkpoint(out / "heads" / "model.safetensors", model, config, preprocessing=settings.get("preprocessing"))
emit(nan=str(weights), heads=str(out / "heads" / "model.safetensors"))
'''

MEMORY_ERROR = PREAMBLE + r'''
import gliofed.inference
from gliofed.inference import Predictor

checkpoint, paths = sys.argv[1], dict(zip(("t1", "t1ce", "t2", "flair"), sys.argv[2:6]))
predictor = Predictor(checkpoint, device="cpu")

def out_of_memory(*_args, **_kwargs):
    def pipeline(_data):
        raise MemoryError()
    return pipeline

gliofed.inference.inference_pipeline = out_of_memory
try:
    predictor.predict_case("x", paths)
    emit(raised=None)
except Exception as error:
    from gliofed.errors import GliofedError
    emit(raised=type(error).__name__, gliofed=isinstance(error, GliofedError), message=str(error))
'''

DISK_FULL = PREAMBLE + r'''
import errno
import torch
import gliofed.fileio
from gliofed.config import TrainConfig
from gliofed.model import build_model
from gliofed.runs import TrainingRun

run = TrainingRun(sys.argv[1])
config = TrainConfig(model={"features": (4, 8, 16, 32), "hidden": 8}, device="cpu")
model = build_model(config)
run.save_state(1, model, {}, [{"round": 1}], config)
earlier = {k: v.clone() for k, v in model.state_dict().items()}
with torch.no_grad():
    for p in model.parameters():
        p.add_(1.0)
real = gliofed.fileio.os.fsync

def fsync(fd):  # the disk fills up while the second round's settings file is flushed
    if "state.json" in os.path.basename(os.readlink(f"/proc/self/fd/{fd}")):
        raise OSError(errno.ENOSPC, "No space left on device")
    return real(fd)

gliofed.fileio.os.fsync = fsync
raised = None
try:
    run.save_state(2, model, {}, [{"round": 1}, {"round": 2}], config)
except Exception as error:
    from gliofed.errors import GliofedError
    raised = {"type": type(error).__name__, "gliofed": isinstance(error, GliofedError), "line": first_line(error),
              "lines": len(str(error).strip().splitlines())}
gliofed.fileio.os.fsync = real
try:
    state = run.load_state()
    same = all(torch.equal(state["model"][k], v) for k, v in earlier.items())
    loaded = {"round": state["round"], "weights_of_round_1": bool(same)}
except Exception as error:
    loaded = {"error": first_line(error)}
emit(raised=raised, loaded=loaded)
'''


def _peak_mb(res: Result) -> float | None:
    for line in res.err.splitlines():
        if line.startswith("CENSUS_PEAK_RSS_KB "):
            return int(line.split()[1]) / 1024
    return None


def _clean(res: Result) -> Result:
    """``res`` without the census's own peak-RSS line (so that err_line finds the command's)."""
    err = "\n".join(line for line in res.err.splitlines() if not line.startswith("CENSUS_PEAK_RSS_KB "))
    return Result(res.rc, res.out, err, res.wall, res.killed)


def _case7(c: Census, name: str) -> tuple[Path, dict]:
    """A fresh copy of one cohort case with its ground truth, in its own folder: (folder, contrast/seg -> path)."""
    row = next(r for r in c.rows if r.get("seg"))
    folder = c.fresh(name)
    paths = {}
    for key in ("t1", "t1ce", "t2", "flair", "seg"):
        target = folder / f"x_{key}.nii.gz"
        shutil.copy(row[key], target)
        paths[key] = target
    return folder, paths


def _scans(paths: dict) -> list[str]:
    return [a for m in ("t1", "t1ce", "t2", "flair") for a in (f"--{m}", str(paths[m]))]


def _refused(res: Result) -> bool:
    return res.killed is None and res.rc not in (0, None) and not res.traceback


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def _extreme_copy(c: Census, name: str, subjects: int | None = None) -> tuple[Path, dict]:
    """A manifest whose first subject's FLAIR has two voxels of 3e38 (finite float32): (manifest, that row)."""
    rows = [dict(r) for r in c.rows]
    first = rows[0]
    folder = c.fresh(name)
    flair = folder / Path(first["flair"]).name
    c.script("extreme.py", first["flair"], flair)
    first["flair"] = str(flair)
    return c.write_manifest(c.work / f"{name}.csv", rows[:subjects] if subjects else rows), first


EXTREME = PREAMBLE + r'''
import nibabel as nib
import numpy as np
image = nib.load(sys.argv[1])
data = np.asarray(image.dataobj, dtype=np.float32)
data.flat[[3, 17]] = 3e38
nib.save(nib.Nifti1Image(data, image.affine), sys.argv[2])
emit(ok=True)
'''

BOMB_SHAPE = (3000, 3000, 300)


def _bomb(path: Path) -> Path:
    """A 56-byte .nii.gz whose NIfTI-1 header declares 3000 x 3000 x 300 int16 voxels (5.4 GB)."""
    import gzip
    import struct

    header = bytearray(348)
    struct.pack_into("<i", header, 0, 348)                                # sizeof_hdr
    struct.pack_into("<8h", header, 40, 3, *BOMB_SHAPE, 1, 1, 1, 1)       # dim
    struct.pack_into("<hh", header, 70, 4, 16)                            # datatype int16, bitpix
    struct.pack_into("<8f", header, 76, 1, 1, 1, 1, 1, 1, 1, 1)           # pixdim
    struct.pack_into("<f", header, 108, 352.0)                            # vox_offset
    header[344:348] = b"n+1\0"                                            # magic
    path.write_bytes(gzip.compress(bytes(header) + b"\0" * 4))
    return path


def _bomb_manifest(c: Census, name: str) -> tuple[Path, dict]:
    row = dict(next(r for r in c.rows if r.get("seg")))
    folder = c.fresh(name)
    row["t1"] = str(_bomb(folder / "bomb_t1.nii.gz"))
    return c.write_manifest(c.work / f"{name}.csv", [row]), row


def _bomb_verdict(res: Result, named: bool) -> tuple[bool, str]:
    peak = _peak_mb(res)
    tried = "MemoryError" in res.out + res.err
    ok = named and not tried and not res.traceback and peak is not None and peak < 200
    clean = _clean(res)
    said = next((line for line in _lines(clean.out + "\n" + clean.err) if "bomb" in line or "_t1" in line
                 or "rror" in line), "")
    text = f"exit {res.rc}" + (f"; {short(said, 170)}" if said else "") if not res.traceback else described(clean)
    return ok, (f"peak RSS {peak:.0f} MB (cap 4 GB); " if peak is not None else "") + text


@probe(7, "7a", "predict --out the case's own folder (its ground truth x_seg.nii.gz beside the scans)")
def predict_over_ground_truth(c: Census):
    folder, paths = _case7(c, "gt_case")
    before = paths["seg"].read_bytes()
    res = c.cli("predict", _checkpoint_of(c.base), *_scans(paths), "--out", folder, timeout=300)
    kept = paths["seg"].read_bytes() == before
    return kept and _refused(res), ("ground truth kept; " if kept else "ground truth x_seg.nii.gz OVERWRITTEN; ") + (
        described(res))


@probe(7, "7b", "predict twice into the same --out (no --overwrite)")
def predict_twice(c: Census):
    _, paths = _case7(c, "twice_case")
    out = c.work / "twice_out"
    first = c.cli("predict", _checkpoint_of(c.base), *_scans(paths), "--out", out, timeout=300)
    if first.rc != 0:
        raise ProbeError(f"the first predict failed: {described(first)}")
    mask = out / "x_seg.nii.gz"
    stamp = mask.stat().st_mtime_ns
    res = c.cli("predict", _checkpoint_of(c.base), *_scans(paths), "--out", out, timeout=300)
    kept = mask.stat().st_mtime_ns == stamp
    return kept and _refused(res), ("earlier prediction kept; " if kept else "earlier prediction replaced; ") + (
        described(res))


@probe(7, "7c", "check: two FLAIR voxels of 3e38 (finite float32; z-scoring overflows)")
def check_extreme(c: Census):
    manifest, row = _extreme_copy(c, "extreme_check", subjects=2)
    res = c.cli("check", manifest, timeout=300)
    mention = next((line for line in _lines(res.out + "\n" + res.err) if row["subject_id"] in line
                    and "flair" in line.lower()), "")
    ok = res.rc not in (0, None) and not res.traceback and bool(mention)
    return ok, f"exit {res.rc}" + (f"; {short(mention, 150)}" if mention else "; the case is not reported")


@probe(7, "7d", "preprocess: two FLAIR voxels of 3e38 (NaN cached?)")
def preprocess_extreme(c: Census):
    manifest, row = _extreme_copy(c, "extreme_preprocess", subjects=2)
    cache = c.work / "cache_extreme"
    res = c.cli("preprocess", manifest, "--cache", cache, "--size", "32", timeout=300)
    cached = cache / "cases" / f"{row['subject_id']}.image.npy"
    finite = c.script("finite.py", cached)["finite"] if cached.is_file() else None
    skipped = next((line for line in _lines(res.out) if f"skipped {row['subject_id']}" in line), "")
    ok = not res.traceback and finite is not False and (bool(skipped) or _refused(res))
    if finite is False:
        return False, f"exit {res.rc}; {row['subject_id']} cached with NaN/Inf values"
    return ok, (short(skipped, 170) if skipped else described(res))


FINITE = PREAMBLE + r'''
import numpy as np
emit(finite=bool(np.isfinite(np.load(sys.argv[1], mmap_mode="r")).all()))
'''


@probe(7, "7e", "predict: two FLAIR voxels of 3e38")
def predict_extreme(c: Census):
    folder, paths = _case7(c, "extreme_case")
    c.script("extreme.py", paths["flair"], paths["flair"])
    out = c.work / "extreme_out"
    res = c.cli("predict", _checkpoint_of(c.base), *_scans(paths), "--out", out, timeout=300)
    if res.rc == 0:
        text = (out / "x_markers.json").read_text() if (out / "x_markers.json").is_file() else ""
        return False, "exit 0; markers " + ("hold NaN" if "NaN" in text else "written") + f"; {short(res.out, 120)}"
    return _refused(res), described(res)


@probe(7, "7f", "train (fedavg, 2 rounds) on the cohort with one FLAIR of 3e38 voxels")
def train_extreme(c: Census):
    manifest, row = _extreme_copy(c, "extreme_train")
    out = c.work / "extreme_run"
    res = c.cli(*c.train_args(out, "--rounds", "2", manifest=manifest, cache=c.work / "cache_extreme_train"),
                timeout=400)
    if res.rc == 0:
        skipped = next((line for line in _lines(res.out) if f"skipped {row['subject_id']}" in line), "")
        if skipped:
            return True, "exit 0; " + short(skipped, 150)
        left_out = _sites_left_out(out)
        return False, f"exit 0; {row['subject_id']} not named" + (
            f"; site {next(iter(left_out))} left out: {short(next(iter(left_out.values())), 100)}" if left_out else
            "; trained on it")
    return _refused(res), described(res) + ("" if announced(res) is None else " (after training started)")


@probe(7, "7g", "predict with a checkpoint holding a NaN weight")
def nan_checkpoint(c: Census):
    variants = c.variants()
    out = c.work / "nan_out"
    _, paths = _case7(c, "nan_case")
    res = c.cli("predict", variants["nan"], *_scans(paths), "--out", out, timeout=300)
    if res.rc == 0:
        text = (out / "x_markers.json").read_text()
        return False, "exit 0; x_markers.json " + ("holds bare NaN (not JSON)" if "NaN" in text else "written")
    return _refused(res), described(res)


@probe(7, "7h", "train --resume on another cohort (synth --seed 1) into a fedavg run")
def resume_other_data(c: Census):
    other = c.work / "cohort_seed1"
    made = c.cli("synth", "--preset", "tiny", "--seed", "1", "--out", other, timeout=300)
    if made.rc != 0:
        raise ProbeError(f"synth --seed 1 failed: {described(made)}")
    run = c.work / "resume_data"
    shutil.copytree(c.base, run)
    res = c.cli(*c.train_args(run, "--rounds", "2", "--resume", manifest=other / "manifest.csv",
                              cache=c.work / "cache_seed1"), timeout=400)
    if res.rc == 0:
        return False, "exit 0: continued on the other cohort (two test sets in one history)"
    return _refused(res) and "manifest" in res.err, described(res)


@probe(7, "7i", "a fedavg reply whose BatchNorm running_var is -50")
def negative_variance(c: Census):
    return _reply(c, "negative_variance", "running_var -50")


@probe(7, "7j", "a fedavg reply with one weight tensor of 1e30")
def weights_1e30(c: Census):
    return _reply(c, "weights_1e30", "weights 1e30")


@probe(7, "7k", "check: a 56-byte .nii.gz declaring 3000 x 3000 x 300 voxels (peak RSS < 200 MB)")
def bomb_check(c: Census):
    manifest, row = _bomb_manifest(c, "bomb_check")
    res = c.cli("check", manifest, timeout=300, env={"CENSUS_RSS": "1"}, cap_gb=4)
    named = res.rc not in (0, None) and "bomb_t1.nii.gz" in res.out
    return _bomb_verdict(res, named)


@probe(7, "7l", "preprocess: the same bomb (peak RSS < 200 MB)")
def bomb_preprocess(c: Census):
    manifest, row = _bomb_manifest(c, "bomb_preprocess")
    res = c.cli("preprocess", manifest, "--cache", c.work / "cache_bomb", "--size", "32", timeout=300,
                env={"CENSUS_RSS": "1"}, cap_gb=4)
    named = f"skipped {row['subject_id']}" in res.out or _refused(res)
    return _bomb_verdict(res, named)


@probe(7, "7m", "predict: the same bomb as the T1 (peak RSS < 200 MB)")
def bomb_predict(c: Census):
    _, paths = _case7(c, "bomb_case")
    _bomb(paths["t1"])
    res = c.cli("predict", _checkpoint_of(c.base), *_scans(paths), "--out", c.work / "bomb_out", timeout=300,
                env={"CENSUS_RSS": "1"}, cap_gb=4)
    return _bomb_verdict(res, _refused(res))


def _variant_json(c: Census, name: str, edit: Callable[[dict], object]) -> Path:
    """A copy of the base checkpoint whose model.json is edited by ``edit`` (JSON only: done here)."""
    folder = c.fresh(name)
    base = _checkpoint_of(c.base)
    shutil.copy(base, folder / "model.safetensors")
    settings = json.loads(base.with_suffix(".json").read_text())
    text = edit(settings)
    (folder / "model.json").write_text(text if isinstance(text, str) else json.dumps(settings))
    return folder / "model.safetensors"


def _predict_with(c: Census, checkpoint: Path, name: str, extra: tuple = (), **kw) -> Result:
    _, paths = _case7(c, f"{name}_case")
    return c.cli("predict", checkpoint, *_scans(paths), *extra, "--out", c.work / f"{name}_out", timeout=300, **kw)


@probe(7, "7n", "predict with a model.json declaring features (16, 32, 64, 4096) (~2 GB of weights; peak RSS)")
def huge_features(c: Census):
    checkpoint = _variant_json(c, "huge", lambda s: s["model_config"].update(features=[16, 32, 64, 4096]))
    res = _predict_with(c, checkpoint, "huge", env={"CENSUS_RSS": "1"}, cap_gb=4)
    peak = _peak_mb(res)
    ok = _refused(res) and peak is not None and peak < 1024
    return ok, (f"peak RSS {peak:.0f} MB (cap 4 GB); " if peak is not None else "") + described(_clean(res))


@probe(7, "7o", "a second train into a run folder whose lock a live process holds")
def run_lock(c: Census):
    import socket

    run = c.fresh("locked_run")
    holder = subprocess.Popen([c.python, "-c", "import time; time.sleep(600)"])
    try:
        for name in (".lock", ".train.lock"):  # whichever name the tree's run lock has
            (run / name).write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname()}))
        res = c.cli(*c.train_args(run), timeout=400, kill_on=ANNOUNCE)
    finally:
        holder.kill()
        holder.wait()
    if res.killed == "matched":
        return False, "accepted: started training into the folder another process is writing (stopped by the probe)"
    return refused_early(res), described(res)


@probe(7, "7p", "train without --size when one t1 is missing")
def native_size_missing(c: Census):
    rows = [dict(r) for r in c.rows]
    rows[0]["t1"] = str(c.work / "no_such_t1.nii.gz")
    manifest = c.write_manifest(c.work / "missing_t1.csv", rows)
    args = c.train_args(c.work / "missing_t1_run", manifest=manifest, cache=c.work / "cache_missing_t1")
    position = args.index("--size")
    del args[position:position + 2]
    res = c.cli(*args, timeout=400)
    if res.rc == 0:
        skipped = next((line for line in _lines(res.out) if "skipped" in line), "")
        return True, "exit 0; " + short(skipped, 150)
    return _refused(res), described(res)


@probe(7, "7q", "predict --out FILE (an existing file)")
def predict_out_file(c: Census):
    target = c.work / "predict_out_file"
    target.write_text("a file")
    _, paths = _case7(c, "out_file_case")
    res = c.cli("predict", _checkpoint_of(c.base), *_scans(paths), "--out", target, timeout=300)
    kept = target.read_text() == "a file"
    return _refused(res) and kept, described(res)


@probe(7, "7r", "predict --device gpu")
def predict_gpu(c: Census):
    res = _predict_with(c, _checkpoint_of(c.base), "gpu", extra=("--device", "gpu"))
    return _refused(res) and "gpu" in err_line(res.err), described(res)


@probe(7, "7s", "an error whose message is empty (MemoryError()) while predicting (unit level: Predictor)")
def empty_message(c: Census):
    _, paths = _case7(c, "memory_error_case")
    data = c.script("memory_error.py", _checkpoint_of(c.base), *(paths[m] for m in ("t1", "t1ce", "t2", "flair")))
    if data["raised"] is None:
        raise ProbeError("the patched pipeline did not raise")
    ok = data["gliofed"] and len(data["message"].strip().splitlines()) == 1
    return ok, f"{data['raised']}: {short(data['message'], 150)}"


@probe(7, "7t", "predict --manifest whose second subject_id has 300 characters")
def long_subject(c: Census):
    _, paths = _case7(c, "long_case")
    manifest = c.work / "long_ids.csv"
    scans = ",".join(str(paths[m]) for m in ("t1", "t1ce", "t2", "flair"))
    manifest.write_text(f"subject_id,t1,t1ce,t2,flair\nx,{scans}\n{'y' * 300},{scans}\n")
    out = c.work / "long_out"
    res = c.cli("predict", _checkpoint_of(c.base), "--manifest", manifest, "--out", out, timeout=300)
    written = _files(out)
    ok = _refused(res) and not written
    return ok, described(res) + (f"; left behind {', '.join(written)}" if written else "; nothing written")


def _predict_refused(c: Census, checkpoint: Path, name: str):
    res = _predict_with(c, checkpoint, name)
    if res.rc == 0:
        return False, f"exit 0: predicted with it; {short(res.out, 120)}"
    return _refused(res), described(res)


@probe(7, "7u", "predict with a model.json whose model_config is a list")
def config_list(c: Census):
    return _predict_refused(c, _variant_json(c, "config_list", lambda s: s.update(model_config=[1, 2])), "list")


@probe(7, "7v", "predict with a model.json nested 200,000 deep")
def config_deep(c: Census):
    return _predict_refused(c, _variant_json(c, "config_deep", lambda s: "[" * 200_000 + "]" * 200_000), "deep")


@probe(7, "7w", "predict with a model whose IDH head has 3 classes (heads that are not the markers)")
def odd_heads(c: Census):
    return _predict_refused(c, Path(c.variants()["heads"]), "heads")


@probe(7, "7x", "predict with a model.json whose preprocessing lists 2 contrasts for a 4-channel model")
def channels(c: Census):
    checkpoint = _variant_json(c, "channels", lambda s: s["preprocessing"].update(modalities=["t1", "t2"]))
    return _predict_refused(c, checkpoint, "channels")


@probe(7, "7y", "curate --merge of an empty CSV")
def merge_empty(c: Census):
    empty = c.work / "empty_merge.csv"
    empty.write_text("")
    res = c.cli("curate", "--merge", empty, "--out", c.work / "merged_empty.csv", timeout=200)
    return _refused(res), described(res)


@probe(7, "7z", "disk full while saving a round's state (unit level: TrainingRun.save_state, ENOSPC on flush)")
def disk_full(c: Census):
    data = c.script("disk_full.py", c.fresh("disk_full_run"))
    raised, loaded = data["raised"], data["loaded"]
    intact = loaded.get("round") == 1 and loaded.get("weights_of_round_1")
    one_sentence = bool(raised) and raised["gliofed"] and raised["lines"] == 1
    state = ("earlier state intact" if intact else f"earlier state NOT intact ({loaded})")
    said = f"{raised['line']}" if raised else "nothing raised"
    return one_sentence and intact, f"{state}; {short(said, 160)}"


@probe(7, "7aa", "predict --subject '=SUM(A1:A9)' (a formula as a file name and CSV cell)")
def formula_subject(c: Census):
    _, paths = _case7(c, "formula_case")
    out = c.work / "formula_out"
    res = c.cli("predict", _checkpoint_of(c.base), *_scans(paths), "--subject", "=SUM(A1:A9)", "--out", out,
                timeout=300)
    written = _files(out)
    return _refused(res) and not written, described(res) + (f"; wrote {', '.join(written[:2])}" if written else "")


@probe(7, "7ab", "curate --merge of a manifest whose dataset cell is a formula: the merged CSV's cell")
def formula_cell(c: Census):
    rows = [dict(r) for r in c.rows[:2]]
    rows[0]["dataset"] = '=HYPERLINK("http://example.invalid","x")'
    source = c.write_manifest(c.work / "formula_source.csv", rows)
    merged = c.work / "formula_merged.csv"
    res = c.cli("curate", "--merge", source, "--out", merged, timeout=200)
    if res.rc != 0:
        return False, described(res)
    with merged.open(newline="") as handle:
        cell = next(csv.DictReader(handle))["dataset"]
    return cell.startswith("'"), f"merged cell: {short(cell, 80)}"


@probe(7, "7ac", "evaluate a model.json whose preprocessing size is 0")
def size_zero_checkpoint(c: Census):
    checkpoint = _variant_json(c, "size0", lambda s: s["preprocessing"].update(size=0))
    res = c.cli("evaluate", checkpoint, c.manifest, "--bootstrap", "10", "--out", c.work / "size0_eval", timeout=300)
    built = (c.cohort / "cache_0").exists()
    return _refused(res) and not built, described(res) + ("; built cache_0" if built else "")


@probe(7, "7ad", "train --external-site nosuch (refused before the cache refresh?)")
def external_nosuch(c: Census):
    cache = c.work / "cache_nosuch"
    res = c.cli(*c.train_args(c.work / "nosuch_run", "--external-site", "nosuch", cache=cache), timeout=400)
    touched = cache.exists()
    return _refused(res) and not touched, described(res) + ("; after refreshing the cache" if touched else "")


# ----------------------------------------------------------------------------------------------------------------
# census, tables
# ----------------------------------------------------------------------------------------------------------------
def _git(tree: Path, *args: str) -> str:
    try:
        done = subprocess.run(["git", "-C", str(tree), *args], capture_output=True, text=True, timeout=30)
        return done.stdout.rstrip("\n")  # not strip(): porcelain lines start with a status column
    except (OSError, subprocess.SubprocessError):
        return ""


def run_census(tree: Path, python: str, keep: bool = False, only: set[str] | None = None) -> dict:
    work = Path(tempfile.mkdtemp(prefix="fault_census_"))
    census = Census(tree.resolve(), python, work)
    started = time.monotonic()
    date = subprocess.run(["date"], capture_output=True, text=True).stdout.strip()
    commit = _git(tree, "rev-parse", "--short", "HEAD").strip()
    changed = [line[3:] for line in _git(tree, "status", "--porcelain", "--untracked-files=no").splitlines()]
    rows = []
    try:
        try:
            census.prepare()
            setup_error = None
        except ProbeError as error:
            setup_error = str(error)
        for klass, key, title, function in PROBES:
            if only and key not in only:
                continue
            t0 = time.monotonic()
            if setup_error:
                status, evidence = "probe error", f"setup failed: {setup_error}"
            else:
                try:
                    ok, evidence = function(census)
                    status = "not probed" if ok is None else ("yes" if ok else "no")
                except ProbeError as error:
                    status, evidence = "probe error", str(error)
                except Exception as error:  # a defect of the probe: reported, never counted either way
                    status, evidence = "probe error", f"{type(error).__name__}: {error}"
            evidence = str(evidence).replace(str(work), "$WORK")  # the temporary folder's name says nothing
            rows.append({"class": klass, "key": key, "sub_case": title, "handled": status,
                         "evidence": short(evidence, 260), "wall_s": round(time.monotonic() - t0, 1)})
            print(f"  [{key}] {status:<11} {rows[-1]['wall_s']:6.1f} s  {rows[-1]['evidence']}", flush=True)
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    return {"tree": str(tree), "commit": commit, "changed_files": changed, "started": date,
            "gliofed_file": census.setup.get("gliofed_file"), "setup": census.setup,
            "wall_s": round(time.monotonic() - started, 1), "rows": rows, "work": str(work) if keep else None}


def _counts(result: dict) -> dict[int, tuple[int, int]]:
    counts = {}
    for row in result["rows"]:
        good, total = counts.get(row["class"], (0, 0))
        counts[row["class"]] = (good + (row["handled"] == "yes"), total + 1)
    return counts


def text_table(result: dict) -> str:
    lines = [f"tree {result['tree']} (gliofed from {result['gliofed_file']}), {result['wall_s']:.0f} s",
             f"{'':4}{'handled':<12}sub-case / evidence"]
    for row in result["rows"]:
        lines.append(f"{row['key']:<4}{row['handled']:<12}{row['sub_case']}")
        lines.append(f"{'':16}{row['evidence']}")
    counts = _counts(result)
    for klass, (good, total) in sorted(counts.items()):
        lines.append(f"class {klass} ({CLASSES[klass]}): {good}/{total} handled well")
    good = sum(g for g, _ in counts.values())
    total = sum(t for _, t in counts.values())
    lines.append(f"total: {good}/{total} handled well")
    return "\n".join(lines)


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown(before: dict, after: dict, labels: tuple[str, str], date: str, device: str) -> str:
    old, new = labels
    by_key = {row["key"]: row for row in before["rows"]}
    def which(result: dict) -> str:
        where = f"`{result['tree']}` at {result.get('commit') or '?'}"
        if result.get("changed_files"):
            where += " plus uncommitted changes to " + ", ".join(f"`{f}`" for f in result["changed_files"])
        return (f"{where} (gliofed from `{result['gliofed_file']}`); started {result.get('started', '?')}, census "
                f"wall clock {result['wall_s'] / 60:.1f} min")

    out = [f"# Fault census (issues 14 and 29): {old} → {new}", "",
           f"Written: {date} (each census's start is below). Device: {device}. Produced by "
           "`benchmarks/fault_census.py` (one fresh subprocess per probe, "
           "`PYTHONPATH=<tree>`, cwd a temporary folder, `gliofed.__file__` checked inside the tree; torch on one "
           "thread).", "",
           f"- {old}: {which(before)}",
           f"- {new}: {which(after)}", "",
           "Probes: the `gliofed` command (`gliofed.cli.main`) on the `tiny` synthetic cohort (`gliofed synth --preset "
           "tiny`, cache 32 x 32, one fedavg round) for classes 3-6; the Python API for class 1 (`Site.handle`) and "
           "class 2 (`federated_round` with one honest and one bad site, checked against a control of two valid "
           "replies); the Flower sub-cases (2h, 5n) at unit level: the ServerApp's own `flower_exchange` with a "
           "stand-in Grid and real Flower `Message`s, then `federated_round` (no Flower server started). 3a/3b "
           "watch the command's file writes and renames with a Python audit hook. 5g runs as user nobody (root "
           "writes into a mode-555 folder). Class 7 (issue 29) probes `predict`, checkpoints, resume and replies; "
           "7i/7j through `federated_round`, 7s/7z at unit level (a patched pipeline, a patched `os.fsync`); 7k-7n "
           "run under a 4 GB address-space cap and report the command's own peak RSS. `$WORK` is the census's "
           "temporary folder.", "",
           "\"yes\" = handled well: refused with a clear error (non-zero exit, no traceback) before any work; a site "
           "refuses the request; a bad reply leaves only its site out while the round goes on and the model equals "
           "the honest site's; a file arrives by rename from a temporary file; a damaged case is re-made or named; a "
           "checkpoint's pickled code does not run.", "",
           f"| class | sub-case | {old} | {new} | evidence {new} |", "|---|---|---|---|---|"]
    for row in after["rows"]:
        was = by_key.get(row["key"], {}).get("handled", "—")
        out.append(f"| {row['class']}. {CLASSES[row['class']]} | {row['key']} {_cell(row['sub_case'])} | {was} | "
                   f"{row['handled']} | {_cell(row['evidence'])} |")
    out += ["", "## Handled well, before → after", "", f"| class | {old} | {new} |", "|---|---|---|"]
    counts_old, counts_new = _counts(before), _counts(after)
    for klass in sorted(counts_new):
        g0, t0 = counts_old.get(klass, (0, 0))
        g1, t1 = counts_new[klass]
        out.append(f"| {klass}. {CLASSES[klass]} | {g0}/{t0} | {g1}/{t1} |")
    g0, t0 = sum(g for g, _ in counts_old.values()), sum(t for _, t in counts_old.values())
    g1, t1 = sum(g for g, _ in counts_new.values()), sum(t for _, t in counts_new.values())
    out += [f"| **total** | **{g0}/{t0}** | **{g1}/{t1}** |", "", f"## Evidence at {old}", ""]
    for row in before["rows"]:
        out.append(f"- {row['key']} ({row['handled']}): {row['evidence']}")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", action="append", type=Path, help="checkout folder (repeatable; default this repo)")
    parser.add_argument("--labels", help="comma-separated names of the trees for the tables (default: paths)")
    parser.add_argument("--json", type=Path, action="append", help="write each tree's results here (one per tree)")
    parser.add_argument("--from-json", type=Path, nargs=2, metavar=("BEFORE", "AFTER"),
                        help="build the before/after table from two saved results instead of running")
    parser.add_argument("--markdown", type=Path, help="write the before/after markdown table (needs two trees)")
    parser.add_argument("--device", default="CPU, 2 cores", help="device line of the markdown (default %(default)s)")
    parser.add_argument("--only", help="comma-separated probe keys (e.g. 2a,5k) to run just those")
    parser.add_argument("--keep", action="store_true", help="keep the temporary work folders")
    args = parser.parse_args(argv)
    if args.from_json:
        results = [json.loads(path.read_text()) for path in args.from_json]
    else:
        trees = args.tree or [REPO]
        results = []
        for i, tree in enumerate(trees):
            print(f"census of {tree}", flush=True)
            result = run_census(tree, sys.executable, keep=args.keep,
                                only=set(args.only.split(",")) if args.only else None)
            results.append(result)
            if args.json and i < len(args.json):
                args.json[i].write_text(json.dumps(result, indent=1))
            print(text_table(result), flush=True)
    if args.markdown:
        if len(results) != 2:
            parser.error("--markdown needs exactly two trees (before, after)")
        labels = tuple(args.labels.split(",")) if args.labels else tuple(r["tree"] for r in results)
        date = subprocess.run(["date"], capture_output=True, text=True).stdout.strip()
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(markdown(results[0], results[1], labels, date, args.device))
        print(f"wrote {args.markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
