"""Scale-out on Ray (advmoe.cluster): a real local Ray instance (this machine's CPUs, loopback only) runs smoke units
as the in-process runner does, each unit once and parents first; a worker killed mid-training is replaced and its unit
resumes from the last checkpoint; bad settings fail in one line before anything runs."""
import importlib.util
import ipaddress
import json
import os
import signal
import sys
import threading
import time

import psutil
import pytest
import torch

from advmoe import cluster
from advmoe import experiments as ex
from advmoe.cli import main

pytestmark = [pytest.mark.cluster,  # not imported here: advmoe.cluster sets Ray's environment first
              pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                                 reason="Ray is the cluster extra: pip install -e .[cluster]")]

SMALL = dict(dataset="cifar10", base_width=4, epochs=2, train_subset=64, batch_size=16, test_subset=16, eval_steps=2)


def _comparable(metrics):
    return ([{k: v for k, v in h.items() if k != "seconds"} for h in metrics["history"]], metrics["final"],
            metrics["model_sha256"])


class Connections:
    """Every inet socket this process and its descendants (Ray's GCS, raylet, workers) hold, sampled every 0.25 s."""

    def __init__(self):
        self.addresses: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self):
        me = psutil.Process()
        while not self._stop.is_set():
            for p in [me, *me.children(recursive=True)]:
                try:
                    for c in p.net_connections(kind="inet"):
                        self.addresses.update(a.ip for a in (c.laddr, c.raddr) if a)
                except psutil.Error:
                    pass
            time.sleep(0.25)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def _loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip.split("%")[0])
    return address.is_loopback or (getattr(address, "ipv4_mapped", None) or address).is_loopback


def test_units_on_local_ray_equal_the_in_process_ones_each_once_on_the_loopback_only(tiny_data, capsys):
    mask = ex.hydra_chain("smoke", 0.5, finetune=False, **SMALL)   # dense -> mask
    finetune = ex.hydra_chain("smoke", 0.5, **SMALL)               # dense -> mask -> fine-tuned
    other = ex.make_spec("smoke", "moe", "at", 0.5, **SMALL)
    specs = [finetune, mask, other, other]  # the mask is also the fine-tuning's parent; `other` asked twice
    done = []
    with Connections() as seen:
        with cluster.executor("ray"):
            on_ray = ex.get_many(specs, progress=False, on_done=lambda s, m: done.append(s.name))
    out = capsys.readouterr().out
    assert "4 unit(s) on Ray (3 asked, 1 parent): 4 done, 0 failed" in out, out
    assert sorted(done) == sorted(s.name for s in specs)
    assert seen.addresses and all(_loopback(ip) for ip in seen.addresses), seen.addresses
    assert cluster.active() is None and "ray" in sys.modules and not sys.modules["ray"].is_initialized()

    in_process = ex.get_many(specs, root=tiny_data / "in-process", progress=False)
    for spec, a, b in zip(specs, on_ray, in_process):
        assert a == ex.load(spec) and _comparable(a) == _comparable(b), spec.name
    dense = finetune.parent.parent
    assert _comparable(ex.load(dense)) == _comparable(ex.load(dense, tiny_data / "in-process"))


PAUSE = "paused.json"


def pausing_get(spec, device, root, recompute, progress):
    """`experiments.get`, but the first attempt writes its pid and the epoch-1 checkpoint's history to a marker file
    in the middle of epoch 2 and waits there (to be killed); a retry, finding the marker, runs straight through."""
    import advmoe.train

    marker = root.parent / PAUSE
    if not marker.exists():
        original, calls = advmoe.train.iteration, [0]
        n_iter = spec.train_subset // spec.batch_size

        def iteration(*args, **kwargs):
            calls[0] += 1
            if calls[0] == n_iter + 2:
                state = torch.load(ex.result_dir(spec, root) / "checkpoint.pt", weights_only=True)
                marker.write_text(json.dumps({"pid": os.getpid(), "epoch": state["epoch"],
                                              "history": state["history"]}))
                time.sleep(600)
            return original(*args, **kwargs)

        advmoe.train.iteration = iteration
    return ex.get(spec, device, root, recompute, progress)


def test_a_killed_worker_is_replaced_and_its_unit_resumes_from_the_checkpoint(tiny_data):
    spec = ex.make_spec("smoke", "moe", "at", 0.5, **{**SMALL, "epochs": 3})
    marker = tiny_data / PAUSE

    def kill_when_paused():
        while not marker.exists():
            time.sleep(0.1)
        time.sleep(0.5)
        os.kill(json.loads(marker.read_text())["pid"], signal.SIGKILL)

    killer = threading.Thread(target=kill_when_paused, daemon=True)
    killer.start()
    with cluster.executor("ray"):
        import ray.cloudpickle

        ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import this file
        (resumed,) = ex.get_many([spec], progress=False, task=pausing_get)
    killer.join(timeout=5)
    paused = json.loads(marker.read_text())
    assert paused["epoch"] == 1
    assert resumed["history"][0] == paused["history"][0]  # epoch 1 as the killed attempt measured it: resumed
    uninterrupted = ex.get(spec, root=tiny_data / "uninterrupted", progress=False)
    assert _comparable(resumed) == _comparable(uninterrupted)


def test_a_failing_unit_is_retried_once_reported_and_never_stops_the_others(tiny_data, capsys):
    good = ex.make_spec("smoke", "s-dense", "standard", 0.5, **SMALL)
    bad = good.replace(dataset="cifar100")  # no CIFAR-100 in the tiny data tree: every attempt fails
    with cluster.executor("ray"):
        with pytest.raises(cluster.UnitsFailed) as e:
            ex.get_many([bad, good], progress=False)
    assert list(e.value.failed) == [bad.name] and "DataMissingError" in e.value.failed[bad.name]
    assert (ex.result_dir(good) / "metrics.json").is_file()
    assert f"failed: {bad.name}: DataMissingError" in capsys.readouterr().out


@pytest.mark.parametrize("args, needle", [
    (["--executor", "mpi"], "invalid choice: 'mpi'"),
    (["--gpus-per-run", "0.5"], "add --executor ray"),
    (["--executor", "ray", "--jobs", "2"], "drop --jobs"),
    (["--executor", "ray", "--address", "nohost"], "--address must be auto, host:port"),
    (["--executor", "ray", "--address", "127.0.0.1:1"], "no Ray cluster answers at 127.0.0.1:1"),
    (["--executor", "ray", "--gpus-per-run", "1.5", "--device", "cuda"], "a fraction in [0, 1]"),
    (["--executor", "ray", "--device", "cuda"], "add --gpus-per-run"),
    (["--executor", "ray", "--gpus-per-run", "0.25", "--device", "cuda"], "the Ray cluster has no GPU"),
])
def test_bad_executor_settings_fail_in_one_line_before_any_unit(tiny_data, capsys, args, needle):
    try:
        code = main(["run", "--preset", "smoke", "--no-progress", *args])
    except SystemExit as e:  # argparse's own errors
        code = e.code
    assert code == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) <= 2, err  # Ray itself may print one line as it starts
    assert not (tiny_data / "results").exists()
