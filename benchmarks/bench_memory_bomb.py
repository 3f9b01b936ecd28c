"""Peak memory of ``gliofed check`` / ``preprocess`` / ``predict`` on a NIfTI bomb (issue 29, point 5): a tiny
``.nii.gz`` whose header declares 3000 x 3000 x 300 int16 voxels (5.4 GB) that the file cannot hold.

    python benchmarks/bench_memory_bomb.py                     # this checkout
    python benchmarks/bench_memory_bomb.py --tree /tmp/old     # another checkout (run under an address-space cap)

Each command runs in a fresh child process of this interpreter (``PYTHONPATH=<tree>``) on a one-case manifest whose
T1 is the bomb and whose other contrasts are small valid scans; its peak resident set size is the child's own
``ru_maxrss`` (``os.wait4``). The children run under an address-space cap (``--cap-gb``, default 4) so that a tree
that believes the header cannot take the machine's memory: it then fails with MemoryError instead, and the row says
so. Target (issue 29): each command refuses the case and peaks under 200 MB.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BOMB_SHAPE = (3000, 3000, 300)
TARGET_MB = 200

#: writes the bomb, the small scans, a one-case manifest and a small checkpoint (in the tree under test)
SETUP = r'''
import gzip, sys
from pathlib import Path
import nibabel as nib
import numpy as np
import torch
from gliofed.config import TrainConfig
from gliofed.model import build_model
from gliofed.runs import save_checkpoint

root = Path(sys.argv[1])
case = root / "case"
case.mkdir(parents=True)
rng = np.random.default_rng(0)
for name in ("t1ce", "t2", "flair"):
    nib.save(nib.Nifti1Image((rng.random((7, 8, 9)) * 100 + 1).astype(np.int16), np.eye(4)),
             case / f"b_{name}.nii.gz")
header = nib.Nifti1Header()
header.set_data_shape(tuple(int(n) for n in sys.argv[2].split("x")))
header.set_data_dtype(np.int16)
(case / "b_t1.nii.gz").write_bytes(gzip.compress(header.binaryblock + b"\0" * 4))
columns = "subject_id,dataset,site,t1,t1ce,t2,flair,seg,idh,codeletion,mgmt,grade,age,sex,split"
row = "b,bench,a," + ",".join(f"case/b_{m}.nii.gz" for m in ("t1", "t1ce", "t2", "flair")) + ",,,,,,,,"
(root / "manifest.csv").write_text(columns + "\n" + row + "\n")
config = TrainConfig(model={"features": (4, 8, 16, 32), "hidden": 8}, device="cpu")
save_checkpoint(root / "model.safetensors", build_model(config), config,
                preprocessing={"size": 8, "modalities": list(config.modalities), "version": 2})
print((case / "b_t1.nii.gz").stat().st_size)
'''


def _capped(cap_gb: float):
    """A ``preexec_fn`` that caps the child's address space at ``cap_gb`` GB."""
    def limit() -> None:
        cap = int(cap_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    return limit


#: runs one gliofed command and prints the command's own peak RSS (ru_maxrss of this process, KB on Linux)
WRAPPER = r'''
import resource, sys
from gliofed.cli import main
try:
    code = main(sys.argv[1:])
except BaseException as error:
    print(f"{type(error).__name__}: {error}"[:300], file=sys.stderr)
    code = 1
print(f"PEAK_RSS_KB {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}", file=sys.stderr)
sys.exit(code if isinstance(code, int) else 1)
'''


def measure(tree: Path, cap_gb: float) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "setup.py").write_text(SETUP)
        (root / "wrapper.py").write_text(WRAPPER)
        done = subprocess.run([sys.executable, str(root / "setup.py"), str(root / "data"),
                               "x".join(map(str, BOMB_SHAPE))], env={**os.environ, "PYTHONPATH": str(tree)},
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"setup failed: {done.stderr.strip().splitlines()[-1]}")
        bomb_bytes = int(done.stdout.strip().splitlines()[-1])
        data = root / "data"
        case = data / "case"
        commands = {
            "check": ["check", str(data / "manifest.csv")],
            "preprocess": ["preprocess", str(data / "manifest.csv"), "--cache", str(root / "cache"), "--size", "8"],
            "predict": ["predict", str(data / "model.safetensors"),
                        *[a for m in ("t1", "t1ce", "t2", "flair") for a in (f"--{m}", str(case / f"b_{m}.nii.gz"))],
                        "--out", str(root / "out")],
        }
        env = {**os.environ, "PYTHONPATH": str(tree), "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
        for name, args in commands.items():
            done = subprocess.run([sys.executable, str(root / "wrapper.py"), *args], cwd=root, capture_output=True,
                                  text=True, env=env, preexec_fn=_capped(cap_gb))
            peak_kb = next((int(line.split()[1]) for line in done.stderr.splitlines()
                            if line.startswith("PEAK_RSS_KB")), None)
            said = [line for line in (done.stderr + done.stdout).splitlines()
                    if line.strip() and not line.startswith("PEAK_RSS_KB") and ("b_t1" in line or "rror" in line)]
            rows.append({"command": name, "exit": done.returncode, "peak_rss_mb": (peak_kb or 0) / 1024,
                         "said": (said[0] if said else "")[:160], "bomb_bytes": bomb_bytes})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", type=Path, default=REPO, help="checkout to measure (default this one)")
    parser.add_argument("--cap-gb", type=float, default=4.0, help="address-space cap of each child (default 4 GB)")
    args = parser.parse_args()
    rows = measure(args.tree.resolve(), args.cap_gb)
    date = time.strftime("%Y-%m-%d")
    device = f"CPU ({os.cpu_count()} cores, {platform.machine()})"
    print(f"NIfTI bomb: {rows[0]['bomb_bytes']} bytes declaring {' x '.join(map(str, BOMB_SHAPE))} int16 voxels "
          f"(5.4 GB); tree {args.tree}; {device}; {date}; children capped at {args.cap_gb:g} GB address space")
    print("| command | exit | peak RSS | under 200 MB | what it said |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(f"| `gliofed {row['command']}` | {row['exit']} | {row['peak_rss_mb']:.0f} MB | "
              f"{'yes' if row['peak_rss_mb'] < TARGET_MB else 'no'} | {row['said'].replace('|', '/')} |")
    return 0 if all(r["peak_rss_mb"] < TARGET_MB for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
