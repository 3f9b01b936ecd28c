"""A writer killed mid-write (SIGKILL, no clean-up) leaves the previous complete ``state.pt``, never a half-written
one: ``--resume`` still loads it. Format-agnostic: it kills a real process that keeps saving."""

import os
import signal
import subprocess
import sys
import time

from gliofed.runs import TrainingRun

_WRITER = """
import sys
from gliofed.runs import TrainingRun
from tests.federated.helpers import small_config, small_model

run, model, config = TrainingRun(sys.argv[1]), small_model(), small_config()
print("ready", flush=True)
rnd = 0
while True:
    rnd += 1
    run.save_state(rnd, model, {"round_note": "x" * 100_000}, [{"round": r} for r in range(rnd)], config)
"""


def test_a_writer_killed_mid_save_leaves_a_loadable_state(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    process = subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path)], stdout=subprocess.PIPE, env=env)
    try:
        assert process.stdout.readline().strip() == b"ready"
        run = TrainingRun(tmp_path)
        deadline = time.monotonic() + 60
        while not run.has_state and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.7)  # several saves in, most likely mid-write
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
    state = TrainingRun(tmp_path).load_state()
    assert state["round"] >= 1 and len(state["history"]) == state["round"]
