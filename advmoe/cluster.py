"""Scale-out with Ray: every unit of a command as one Ray task, on a cluster or on a local Ray instance.

A unit is what `experiments.get_many` runs for one spec: its training (`experiments.get`) or another task with get's
arguments (`worstcase.worst_case_eval`, `audit.audit`, `dual.unit`, ...). While `executor("ray", ...)` is in force
(the CLI's `--executor ray`), `get_many` hands its units to `run_units`: each becomes a Ray task with the resource
request of `--cpus-per-run` and `--gpus-per-run` (a fraction lets several small trainings share one GPU); a chained
spec's parents are tasks too, submitted once and passed to their children as arguments, so Ray starts a child only
after its parents finished. Results land in the results directory through the same atomic writes as a local run: a
killed worker loses nothing, and a resubmitted unit resumes from its last checkpoint. A failed unit is retried once,
then reported; it never stops the others.

A local instance talks to this machine only: Ray's usage stats off, no dashboard, and this node's address the loopback
(Ray takes 127.0.0.1 as the node's IP when RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, so every server binds to it).
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import sys
from pathlib import Path

EXECUTORS = ("local", "ray")
LOCAL_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


@dataclasses.dataclass(frozen=True)
class RaySettings:
    address: str | None  # None: a local instance on this machine
    gpus_per_run: float
    cpus_per_run: float


_ACTIVE: RaySettings | None = None


def active() -> RaySettings | None:
    """The Ray settings in force (`executor`), or None: units run in this process or its workers."""
    return _ACTIVE


class UnitsFailed(RuntimeError):
    """Some units failed twice; the others finished. `failed`: unit name -> its error, one line each."""

    def __init__(self, failed: dict[str, str]):
        self.failed = failed
        super().__init__(f"{len(failed)} unit(s) failed after one retry: " +
                         "; ".join(f"{name}: {error}" for name, error in failed.items()))


def check(executor: str = "local", address: str | None = None, gpus_per_run: float = 0.0,
          cpus_per_run: float = 1.0, device: str = "cpu") -> None:
    """Raise ValueError (one line naming the fix) for settings no cluster can honour; before anything starts."""
    if executor not in EXECUTORS:
        raise ValueError(f"unknown executor {executor!r}; allowed: {', '.join(EXECUTORS)}")
    if executor == "local":
        if address is not None or gpus_per_run or cpus_per_run != 1:
            raise ValueError("--address, --gpus-per-run and --cpus-per-run place units on a Ray cluster: add "
                             "--executor ray")
        return
    if not gpus_per_run >= 0 or (gpus_per_run > 1 and gpus_per_run != int(gpus_per_run)):
        raise ValueError(f"--gpus-per-run must be a fraction in [0, 1] or a whole number of GPUs, got {gpus_per_run}")
    if not cpus_per_run > 0:
        raise ValueError(f"--cpus-per-run must be > 0, got {cpus_per_run}")
    if device.startswith("cuda") and not gpus_per_run:
        raise ValueError(f"--device {device} on Ray needs a GPU share per run: add --gpus-per-run (e.g. 0.25)")
    if gpus_per_run and not device.startswith("cuda"):
        raise ValueError(f"--gpus-per-run {gpus_per_run:g} reserves GPUs that --device {device} does not use: "
                         "add --device cuda")
    if address not in (None, "auto"):
        _host_port(address)


def _host_port(address: str) -> tuple[str, int]:
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"--address must be auto, host:port or ray://host:port, got {address!r}")
    return host, int(port)


def _reachable(address: str, timeout: float = 5.0) -> None:
    """One TCP connection to the cluster's address, so that a wrong one fails at once rather than after Ray's
    minute of retries."""
    host, port = _host_port(address)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as e:
        raise ValueError(f"no Ray cluster answers at {address} ({e.strerror or e}): start one there with "
                         "`ray start --head`, or pass its address (--address auto on one of its nodes)") from None


def _import_ray(local: bool):
    if local:
        if "ray" in sys.modules and sys.modules["ray"]._private.ray_constants.ENABLE_RAY_CLUSTER:
            raise ValueError("ray was imported before advmoe.cluster could keep a local instance on the loopback: "
                             "export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 RAY_USAGE_STATS_ENABLED=0 first")
        os.environ.update(LOCAL_ENV)
    else:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        import ray
    except ImportError:
        raise ValueError("--executor ray needs Ray: pip install -e .[cluster]") from None
    return ray


@contextlib.contextmanager
def executor(name: str = "local", address: str | None = None, gpus_per_run: float = 0.0, cpus_per_run: float = 1.0,
             device: str = "cpu"):
    """Around a command: with name "ray", connect to the cluster at `address` ("auto": the one this node belongs to;
    None: start a local instance, loopback only) and send every unit of `experiments.get_many` there; shut down
    after. With "local", nothing changes."""
    global _ACTIVE
    check(name, address, gpus_per_run, cpus_per_run, device)
    if name == "local":
        yield None
        return
    if address not in (None, "auto"):
        _reachable(address)
    ray = _import_ray(local=address is None)
    if address is None:
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    else:
        try:
            ray.init(address=address, log_to_driver=False, configure_logging=False)
        except ConnectionError as e:
            raise ValueError(f"no Ray cluster at --address {address}: {str(e).splitlines()[0]}") from None
    try:
        resources = ray.cluster_resources()
        if gpus_per_run and not resources.get("GPU"):
            raise ValueError(f"--gpus-per-run {gpus_per_run:g}: the Ray cluster has no GPU (resources: "
                             f"{resources.get('CPU', 0):g} CPUs); drop it, or start Ray on GPU nodes")
        if cpus_per_run > resources.get("CPU", 0):
            raise ValueError(f"--cpus-per-run {cpus_per_run:g} is more than the cluster's {resources.get('CPU', 0):g} "
                             "CPUs")
        _ACTIVE = RaySettings(address, gpus_per_run, cpus_per_run)
        yield _ACTIVE
    finally:
        _ACTIVE = None
        ray.shutdown()


def _unit(task, spec, device: str, root: str, recompute: bool, *parents):
    """One unit on a Ray worker (`parents`: the results of its parents' tasks, which Ray waits for)."""
    import advmoe  # noqa: F401  (first: the pinned CPU kernels, as in every process that computes)

    return task(spec, device, Path(root), recompute, False)


def run_units(specs: list, task, device: str = "cpu", root: Path | None = None, recompute: bool = False,
              progress: bool = True, on_done=None) -> list[dict]:
    """`task` for every spec as Ray tasks (`executor` must be in force): parents first (trained with `get`, never
    recomputed, each once), a unit shared by two specs once; one progress bar over all units with an ETA; on_done
    per finished spec as it finishes; at the end a line per failed unit, and UnitsFailed if any did."""
    import ray
    from tqdm import tqdm

    from . import experiments as ex

    if _ACTIVE is None:
        raise RuntimeError("run_units needs cluster.executor('ray', ...) in force")
    root = str(Path(root or ex.results_root()).resolve())
    remote = ray.remote(_unit).options(num_cpus=_ACTIVE.cpus_per_run, num_gpus=_ACTIVE.gpus_per_run, max_retries=1,
                                       retry_exceptions=True)
    refs: dict[tuple, object] = {}
    names: dict[object, str] = {}

    def submit(spec, the_task, again: bool):
        key = (spec.hash, the_task)
        if key not in refs:
            parents = [submit(spec.parent, ex.get, False)] if spec.parent is not None else []
            refs[key] = remote.remote(the_task, spec, device, root, again, *parents)
            names[refs[key]] = spec.name
        return refs[key]

    where: dict[object, list[int]] = {}
    for i, spec in enumerate(specs):
        where.setdefault(submit(spec, task, recompute), []).append(i)
    results: list[dict | None] = [None] * len(specs)
    failed: dict[str, str] = {}
    pending = list(names)
    with tqdm(total=len(pending), desc="units on Ray", unit="unit", disable=not progress) as bar:
        while pending:
            (ref,), pending = ray.wait(pending, num_returns=1)
            try:
                value = ray.get(ref)
            except Exception as e:  # the task's error, or its parent's for a child that could not start
                failed[names[ref]] = _one_line(getattr(e, "cause", None) or e)
            else:
                for i in where.get(ref, []):
                    results[i] = value
                    if on_done:
                        on_done(specs[i], value)
            bar.update()
    parents = len(names) - len(where)
    tqdm.write(f"{len(names)} unit(s) on Ray ({len(where)} asked, {parents} parent{'s' * (parents != 1)}): "
               f"{len(names) - len(failed)} done, {len(failed)} failed")
    for name, error in failed.items():
        tqdm.write(f"failed: {name}: {error}")
    if failed:
        raise UnitsFailed(failed)
    return results


def _one_line(error: BaseException) -> str:
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[-1] if lines else ''}"
