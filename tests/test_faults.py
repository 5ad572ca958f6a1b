"""Faults lose nothing: a run stopped by SIGINT/SIGTERM mid-epoch, mid-evaluation or mid-write resumes to the
same metrics as an uninterrupted one; damaged result and checkpoint files are detected and recomputed."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from advmoe import experiments as ex

SETTINGS = ["dataset=cifar10", "base_width=4", "epochs=2", "train_subset=64", "batch_size=16", "test_subset=16",
            "eval_steps=2"]
ARGS = ["run", "--preset", "smoke", "--only", "moe-n2-r0.5-at", "--no-progress", "--set", *SETTINGS]
SPEC = ex.make_spec("smoke", "moe", "at", 0.5, dataset="cifar10", base_width=4, epochs=2, train_subset=64,
                    batch_size=16, test_subset=16, eval_steps=2)

# Runs `advmoe run` with one function wrapped so that its N-th matching call prints PAUSED and sleeps: the test
# then sends the signal at exactly that point of the run.
DRIVER = """
import os, sys, time
import advmoe.evaluate, advmoe.io, advmoe.train
point, n, suffix = os.environ["PAUSE_AT"], int(os.environ["PAUSE_N"]), os.environ.get("PAUSE_FILE", "")
calls = [0]

def pause_at(module, name, matches=lambda *a, **k: True):
    original = getattr(module, name)
    def wrapper(*args, **kwargs):
        if matches(*args, **kwargs):
            calls[0] += 1
            if calls[0] == n:
                print("PAUSED", flush=True)
                time.sleep(120)
        return original(*args, **kwargs)
    setattr(module, name, wrapper)

if point == "epoch":
    pause_at(advmoe.train, "iteration")
elif point == "eval":
    pause_at(advmoe.evaluate, "pgd")
elif point == "write":  # after the temporary file is complete, before its rename
    pause_at(advmoe.io.os, "replace", lambda src, dst: str(dst).endswith(suffix))
from advmoe.cli import main
sys.exit(main(sys.argv[1:]))
"""


def default_sigint():
    """In the child: SIGINT's default handling, as from a terminal. A background job (`make test &`) inherits
    SIGINT as ignored, and Python then installs no KeyboardInterrupt handler, so Ctrl-C would never arrive."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _comparable(metrics):
    history = [{k: v for k, v in h.items() if k != "seconds"} for h in metrics["history"]]
    return history, metrics["final"]


def _weights(root=None):
    return torch.load(ex.result_dir(SPEC, root) / "checkpoint.pt", weights_only=True)["model"]


@pytest.fixture
def env(tiny_data):
    return {**os.environ, "OMP_NUM_THREADS": "1"}


_UNINTERRUPTED = {}


@pytest.fixture
def uninterrupted(env, tmp_path):
    """The metrics and weights of a run nobody stopped (the tiny dataset is the same in every test: run once)."""
    if not _UNINTERRUPTED:
        other = tmp_path / "uninterrupted"
        subprocess.run([sys.executable, "-m", "advmoe", *ARGS], env={**env, "ADVMOE_RESULTS": str(other)},
                       check=True, capture_output=True)
        _UNINTERRUPTED["run"] = json.loads((ex.result_dir(SPEC, other) / "metrics.json").read_text()), _weights(other)
    return _UNINTERRUPTED["run"]


@pytest.mark.parametrize("point, n, suffix, sig", [
    ("epoch", 6, "", signal.SIGTERM),                   # mid-epoch 2 (4 iterations per epoch)
    ("eval", 2, "", signal.SIGINT),                     # mid-evaluation, after training finished
    ("write", 2, "checkpoint.pt", signal.SIGTERM),      # mid-write of the epoch-2 checkpoint
    ("write", 1, "metrics.json", signal.SIGINT),        # mid-write of the final metrics
])
def test_a_run_stopped_anywhere_resumes_to_the_same_metrics(env, uninterrupted, point, n, suffix, sig):
    out = ex.result_dir(SPEC)
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, *ARGS], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**env, "PAUSE_AT": point, "PAUSE_N": str(n), "PAUSE_FILE": suffix},
                            preexec_fn=default_sigint)
    line = ""
    while "PAUSED" not in line:
        line = proc.stdout.readline()
        assert line or proc.poll() is None, f"the run ended before the pause point: {proc.stderr.read()}"
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "re-run the same command to resume" in stderr
    assert not list(out.glob(".*.tmp")), "a temporary file was left behind"
    assert not (out / "metrics.json").exists()
    if (out / "checkpoint.pt").exists():  # whatever is there is complete
        assert torch.load(out / "checkpoint.pt", weights_only=True)["spec_hash"] == SPEC.hash
    subprocess.run([sys.executable, "-m", "advmoe", *ARGS], env=env, check=True, capture_output=True)
    resumed = json.loads((out / "metrics.json").read_text())
    metrics, weights = uninterrupted
    assert _comparable(resumed) == _comparable(metrics)
    assert all(torch.equal(weights[k], v) for k, v in _weights().items())


def test_damaged_metrics_and_checkpoint_are_detected_and_recomputed(tiny_data):
    first = ex.get(SPEC, progress=False)
    first_weights = _weights()
    out = ex.result_dir(SPEC)
    metrics = out / "metrics.json"
    metrics.write_text(metrics.read_text()[: len(metrics.read_text()) // 2])  # truncated
    with pytest.warns(UserWarning, match="damaged"):
        again = ex.get(SPEC, progress=False)  # re-runs from the good final checkpoint: evaluation only
    assert again["final"] == first["final"] and again["history"] == first["history"]

    text = metrics.read_text()
    metrics.write_text(text.replace(f'"sa": {first["final"]["sa"]}', '"sa": 0.99', 1))  # edited by hand
    with pytest.warns(UserWarning, match="damaged"):
        with pytest.raises(FileNotFoundError):
            ex.load(SPEC)

    with pytest.warns(UserWarning, match="damaged"):
        ex.get(SPEC, progress=False)  # the edited file is recomputed
    ckpt = out / "checkpoint.pt"
    blob = bytearray(ckpt.read_bytes())
    blob[len(blob) // 2] ^= 0xFF  # one flipped byte inside the weights: torch.load may still read it
    ckpt.write_bytes(bytes(blob))
    with pytest.warns(UserWarning, match="does not match the sha256"):
        with pytest.raises(FileNotFoundError, match="no finished checkpoint"):
            ex.load_model(SPEC)
    assert not ckpt.exists()  # the damaged checkpoint is removed ...
    model = ex.trained_model(SPEC, progress=False)  # ... and the model retrained: training is deterministic
    assert _comparable(ex.load(SPEC)) == _comparable(first)
    assert all(torch.equal(first_weights[k], v) for k, v in model.state_dict().items())


def test_a_truncated_checkpoint_restarts_training_with_a_warning(tiny_data):
    out = ex.result_dir(SPEC)
    out.mkdir(parents=True)
    (out / "checkpoint.pt").write_bytes(b"PK\x03\x04 truncated")
    with pytest.warns(UserWarning, match="unreadable"):
        metrics = ex.get(SPEC, progress=False)
    assert len(metrics["history"]) == SPEC.epochs


def test_sigterm_stops_parallel_workers_too(env):
    proc = subprocess.Popen([sys.executable, "-m", "advmoe", *ARGS[:4], "--jobs", "2", "--only", "moe-n2-r0.5-a",
                             "--no-progress", "--set", *SETTINGS, "epochs=50"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)

    def spawned():  # the pool's two spawned processes; multiprocessing's resource tracker is a child too
        with open(f"/proc/{proc.pid}/task/{proc.pid}/children") as f:
            children = [int(c) for c in f.read().split()]
        found = []
        for c in children:
            try:
                if "spawn_main" in open(f"/proc/{c}/cmdline").read():
                    found.append(c)
            except FileNotFoundError:  # exited between the two reads
                pass
        return found

    deadline = time.time() + 120
    while len(spawned()) < 2 and time.time() < deadline:
        time.sleep(0.2)
    workers = spawned()
    assert len(workers) == 2
    time.sleep(3)  # let them start training
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    time.sleep(1)
    alive = [w for w in workers if os.path.exists(f"/proc/{w}") and "Z" not in open(f"/proc/{w}/stat").read().split()[2]]
    assert not alive, f"workers still running after the parent stopped: {alive}"
    settings = {k: json.loads(v) if v[0].isdigit() else v for k, v in (p.split("=") for p in SETTINGS + ["epochs=50"])}
    for spec in ex.table1("smoke", **settings):
        assert not list(ex.result_dir(spec).glob(".*.tmp"))
