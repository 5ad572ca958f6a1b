"""Pinned numerics, provenance, data fingerprints, evaluations tied to their checkpoint, and `advmoe verify`."""
import json
import os
import subprocess
import sys
import warnings

import pytest
import torch

from advmoe import data as datalib
from advmoe import experiments as ex
from advmoe import numerics, verify
from advmoe.io import atomic_write_json, read_json

needs_avx2 = pytest.mark.skipif("avx2" not in numerics.cpu_flags(), reason="the pin needs an x86-64 CPU with AVX2")

# One forward and backward pass of a small MoE at one thread; prints the kernels in effect and a hash of the gradients.
GRADIENTS = """
import hashlib, sys
import advmoe, torch
from advmoe import numerics
numerics.use_pinned_threads() if numerics.mode() == "pinned" else torch.set_num_threads(1)
torch.manual_seed(0)
m = advmoe.create_model("resnet18", "moe", 0.5, 2, base_width=8)
x, y = torch.rand(16, 3, 32, 32), torch.randint(0, 10, (16,))
torch.nn.functional.cross_entropy(m(x), y).backward()
grads = b"".join(p.grad.numpy().tobytes() for p in m.parameters() if p.grad is not None)
print(torch.backends.cpu.get_cpu_capability(), hashlib.sha256(grads).hexdigest())
"""
OTHER_KERNELS = {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41", "MKL_CBWR": "COMPATIBLE"}


def _gradients(**env):
    base = {k: v for k, v in os.environ.items() if k not in (*numerics.PIN, numerics.SWITCH)}
    out = subprocess.run([sys.executable, "-c", GRADIENTS], env={**base, **env}, capture_output=True, text=True,
                         check=True)
    return out.stdout.split()


@needs_avx2
def test_the_pin_makes_the_bits_independent_of_what_the_user_exported():
    pinned = _gradients()
    assert pinned[0] == "AVX2"
    assert _gradients(**OTHER_KERNELS) == pinned  # overridden: the same kernels, the same bits
    native = _gradients(**OTHER_KERNELS, ADVMOE_NUMERICS="native")
    assert native[0] == "DEFAULT" and native[1] != pinned[1]  # the setting does change the bits when not pinned


def test_state_says_what_is_in_effect_and_why_not_pinned():
    code = "import advmoe, torch; from advmoe import numerics; torch.set_num_threads(1); print(__import__('json').dumps(numerics.state()))"
    late = ("import torch; torch.zeros(2).add_(1); torch.set_num_threads(1); import advmoe; "
            "from advmoe import numerics; print(__import__('json').dumps(numerics.state()))")
    base = {k: v for k, v in os.environ.items() if k not in (*numerics.PIN, numerics.SWITCH)}

    def state(script, **env):
        return json.loads(subprocess.run([sys.executable, "-c", script], env={**base, **env}, capture_output=True,
                                         text=True, check=True).stdout)

    off = state(code, ADVMOE_NUMERICS="native")
    assert off["pinned"] is False and "ADVMOE_NUMERICS=native" in off["why_not"]
    if "avx2" in numerics.cpu_flags():
        on = state(code)
        assert on["pinned"] is True and on["aten_capability"] == "AVX2" and on["env"] == numerics.PIN
        too_late = state(late, ATEN_CPU_CAPABILITY="default")  # torch chose its kernels before advmoe was imported
        assert too_late["pinned"] is False and "before advmoe was imported" in too_late["why_not"]


def test_unknown_numerics_mode_is_one_line_exit_2(tmp_path):
    out = subprocess.run([sys.executable, "-m", "advmoe", "list", "--preset", "smoke"], capture_output=True, text=True,
                         env={**os.environ, "ADVMOE_NUMERICS": "fast", "ADVMOE_RESULTS": str(tmp_path)})
    assert out.returncode == 2 and out.stderr.strip().count("\n") == 0
    assert "use one of pinned, native" in out.stderr


def test_computing_pins_threads_restores_them_and_refuses_a_dirty_tree_for_repo_results(monkeypatch, tmp_path):
    torch.set_num_threads(2)
    with ex.computing("cpu", root=tmp_path) as (_, prov):
        assert torch.get_num_threads() == numerics.PIN_THREADS and prov["numerics"]["threads"] == 1
    assert torch.get_num_threads() == 2
    monkeypatch.setattr(ex, "provenance", lambda dev: {"git_dirty": True})
    with pytest.raises(ValueError, match="commit first, or pass --allow-dirty"):
        with ex.computing("cpu", root=datalib.REPO / "results"):
            pass
    with ex.computing("cpu", root=datalib.REPO.parent / "elsewhere") as (_, prov):  # outside the repo: recorded only
        assert prov["git_dirty"] is True
    monkeypatch.setenv(ex.ALLOW_DIRTY, "1")
    with ex.computing("cpu", root=datalib.REPO / "results") as (_, prov):
        assert prov["git_dirty"] is True


SPEC = ex.make_spec("smoke", "moe", "at", 0.5, dataset="cifar10", base_width=4, epochs=2, train_subset=64,
                    batch_size=16, test_subset=16, eval_steps=2)


def test_results_record_the_cpu_kernels_and_a_fingerprint_of_the_decoded_images(tiny_data):
    m = ex.run(SPEC, progress=False)
    prov = m["provenance"]
    assert prov["device_name"] == numerics.cpu_model() and "pillow" in prov["versions"]
    assert set(prov["numerics"]) >= {"pinned", "aten_capability", "env", "threads", "cpu_model", "cpu_flags"}
    train = datalib.load("cifar10", "train", subset=SPEC.train_subset, seed=ex.SUBSET_SEED)
    assert m["data"]["train_sha256"] == train.fingerprint()
    train.images[0, 0, 0, 0] ^= 1  # one bit of one pixel decoded differently
    assert train.fingerprint() != m["data"]["train_sha256"]
    assert len(m["model_sha256"]) == 64 and m["model_sha256"] != m["checkpoint_sha256"]


def test_an_evaluation_of_another_checkpoint_is_never_shown_beside_the_model(tiny_data):
    grid = [0.0, 8 / 255]
    sweep = ex.eps_sweep(SPEC, grid, progress=False)  # trains the model first
    metrics = ex.load(SPEC)
    assert sweep["checkpoint_sha256"] == metrics["checkpoint_sha256"]
    assert ex.eps_sweep(SPEC, grid, progress=False) == sweep  # reused
    assert sweep["model_sha256"] == metrics["model_sha256"]
    path = ex.result_dir(SPEC) / "metrics.json"
    sweep_path = next(path.parent.glob("eps-sweep-*.json"))
    # re-trained into the same weights (pinned numerics), another checkpoint file: the sweep still holds
    atomic_write_json({**{k: v for k, v in metrics.items() if k != "checksum"}, "checkpoint_sha256": "1" * 64}, path)
    assert ex.read_evaluation(sweep_path, SPEC) == sweep
    # the model was re-trained elsewhere into other weights (another machine), the sweep file survived
    atomic_write_json({**{k: v for k, v in metrics.items() if k != "checksum"}, "checkpoint_sha256": "0" * 64,
                       "model_sha256": "0" * 64}, path)
    with pytest.warns(UserWarning, match="computed on another checkpoint"):
        assert ex.read_evaluation(next(path.parent.glob("eps-sweep-*.json")), SPEC) is None
    # with the checkpoint gone, a new evaluation re-trains the model, and every stored evaluation is redone with it
    (path.parent / "checkpoint.pt").unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        aa = ex.autoattack_eval(SPEC, progress=False)
    fresh = ex.load(SPEC)
    assert aa["checkpoint_sha256"] == fresh["checkpoint_sha256"] != "0" * 64
    assert not list(path.parent.glob("eps-sweep-*.json"))  # dropped on retrain, recomputed when asked
    assert ex.eps_sweep(SPEC, grid, progress=False)["checkpoint_sha256"] == fresh["checkpoint_sha256"]


def test_verify_reports_bit_identical_on_this_machine_and_says_why_not_otherwise(tiny_data):
    stored = ex.run(SPEC, progress=False)
    report = verify.verify(SPEC, progress=False)
    if stored["provenance"]["numerics"]["pinned"]:
        assert report["verdict"] == "bit-identical" and report["metrics_differing"] == 0
        assert report["why_not_bit_identical"] is None
    assert read_json(verify.verify_path(SPEC)) == report and verify.last_reports("smoke") == [report]
    # a stored result made without the pin: bit-identity is not expected, and the report says why in one line
    unpinned = {**stored, "provenance": {**stored["provenance"], "numerics": {
        **stored["provenance"]["numerics"], "pinned": False, "why_not": "turned off (ADVMOE_NUMERICS=native)"}}}
    assert "did not use the pinned numerics: turned off" in verify.why_not_identical(unpinned, stored)
    assert "predates pinned numerics" in verify.why_not_identical(
        {**stored, "provenance": {k: v for k, v in stored["provenance"].items() if k != "numerics"}}, stored)
    other_data = {**stored, "data": {**stored["data"], "test_sha256": "0" * 64}}
    assert "decoded test images differ" in verify.why_not_identical(other_data, stored)


def test_verify_falls_back_to_the_seed_spread():
    def result(sa, ra, seed_model="a"):
        return {"final": {"sa": sa, "ra": ra}, "history": [], "model_sha256": seed_model,
                "provenance": {"device": "cpu", "versions": {"torch": "x"}, "numerics": {"pinned": True}},
                "data": {"train_sha256": "t", "test_sha256": "t"}}

    spec = ex.make_spec("smoke", "dense", "at")
    spread = {"sa": 0.01, "ra": 0.01}
    orig = verify.seed_spread
    try:
        verify.seed_spread = lambda spec, root=None: spread
        inside = verify.compare(spec, result(0.40, 0.20), result(0.41, 0.21, "b"))
        outside = verify.compare(spec, result(0.40, 0.20), result(0.40, 0.25, "b"))
        verify.seed_spread = lambda spec, root=None: {}
        unknown = verify.compare(spec, result(0.40, 0.20), result(0.41, 0.21, "b"))
    finally:
        verify.seed_spread = orig
    assert inside["verdict"] == "within seed spread" and "NOT bit-identical although" in inside["detail"]
    assert outside["verdict"] == "outside seed spread" and "RA +5.00 pp (2 seed SD 2.00)" in outside["detail"]
    assert unknown["verdict"] == "not comparable"
    assert verify.compare(spec, result(0.4, 0.2), result(0.4, 0.2))["verdict"] == "bit-identical"


def test_verify_cli_needs_something_stored(tmp_path, monkeypatch, capsys):
    from advmoe.cli import main
    monkeypatch.setenv("ADVMOE_RESULTS", str(tmp_path))
    assert main(["verify", "--preset", "smoke"]) == 2
    assert "nothing stored to verify" in capsys.readouterr().err


def test_native_numerics_option_restarts_with_the_pin_off_and_results_say_so(tiny_data):
    args = ["run", "--preset", "smoke", "--only", "moe-n2-r0.5-at", "--no-progress", "--native-numerics", "--set",
            "dataset=cifar10", "base_width=4", "epochs=1", "train_subset=32", "batch_size=16", "test_subset=8",
            "eval_steps=1"]
    subprocess.run([sys.executable, "-m", "advmoe", *args], env=os.environ.copy(), check=True, capture_output=True)
    spec = ex.make_spec("smoke", "moe", "at", 0.5, dataset="cifar10", base_width=4, epochs=1, train_subset=32,
                        batch_size=16, test_subset=8, eval_steps=1)
    numerics_used = ex.load(spec)["provenance"]["numerics"]
    assert numerics_used["mode"] == "native" and numerics_used["pinned"] is False
    assert "ADVMOE_NUMERICS=native" in numerics_used["why_not"]
