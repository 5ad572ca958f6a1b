"""Atomic writes (temp file + rename), checksummed JSON results and safe checkpoint loading.

A crash never leaves half a file, and a file damaged later (truncated, edited, bit-flipped) is detected:
every JSON result carries the sha256 of its own content, and metrics.json the sha256 of its checkpoint.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from pathlib import Path

import torch


def _atomic(path: Path, write) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_torch_save(obj, path: Path) -> None:
    _atomic(path, lambda f: torch.save(obj, f))


def _checksum(obj: dict) -> str:
    body = {k: v for k, v in obj.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def atomic_write_json(obj: dict, path: Path) -> dict:
    """Write a JSON object atomically, with a "checksum" field that `read_json` verifies; returns what was written."""
    obj = {**obj, "checksum": _checksum(obj)}
    _atomic(path, lambda f: f.write((json.dumps(obj, indent=1, sort_keys=False) + "\n").encode()))
    return obj


def read_json(path: Path) -> dict | None:
    """A JSON object written by `atomic_write_json`; None if missing, and None with a warning if it is
    damaged (unparsable, or its checksum does not match: truncated, edited or corrupted), so it is recomputed."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        obj = json.loads(path.read_text())
        ok = isinstance(obj, dict) and obj.get("checksum") == _checksum(obj)
    except (ValueError, UnicodeDecodeError):
        ok = False
    if not ok:
        warnings.warn(f"{path} is damaged (unreadable or checksum mismatch); it will be recomputed")
        return None
    return obj


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def state_sha256(state: dict) -> str:
    """sha256 of a model's state_dict (names, dtypes, shapes and bytes): the identity of a trained model.

    Unlike the checkpoint file's sha256 it leaves out what a checkpoint also holds (wall-clock times), so two
    runs that train the same weights give the same value.
    """
    h = hashlib.sha256()
    for name, t in state.items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}:".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def bits(correct) -> str:
    """Per-example correctness (a bool tensor, or a list of them in order) as a string of 0/1 for JSON results:
    stored so that two models, or two attacks, can be compared image by image."""
    if isinstance(correct, (list, tuple)):
        correct = torch.cat(correct) if correct else torch.zeros(0, dtype=torch.bool)
    return "".join("1" if c else "0" for c in correct.tolist())


def from_bits(text: str) -> torch.Tensor:
    """The bool tensor a `bits` string encodes."""
    return torch.tensor([c == "1" for c in text], dtype=torch.bool)


DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"


def digits(choices: torch.Tensor) -> str:
    """Per-example small integers (an expert index, < 36) as one character each, for JSON results."""
    if len(choices) and (choices.min() < 0 or choices.max() >= len(DIGITS)):
        raise ValueError(f"digits stores integers in [0, {len(DIGITS)}), got {choices.min()}..{choices.max()}")
    return "".join(DIGITS[c] for c in choices.tolist())


def from_digits(text: str) -> torch.Tensor:
    """The integer tensor a `digits` string encodes."""
    return torch.tensor([DIGITS.index(c) for c in text], dtype=torch.long)


def load_checkpoint(path: Path, spec) -> dict | None:
    """The checkpoint's state, or None (with a warning) when it is unreadable; refuses another spec's checkpoint."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated or corrupt file: start over rather than crash
        warnings.warn(f"checkpoint {path} is unreadable ({type(e).__name__}); training restarts from scratch")
        return None
    if state.get("spec_hash") != spec.hash:
        raise ValueError(f"checkpoint {path} belongs to spec {state.get('spec_hash')}, not {spec.hash}; "
                         f"delete it or use the spec it was made with")
    return state
