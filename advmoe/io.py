"""Atomic writes (temp file + rename) and safe checkpoint loading: a crash never leaves half a file."""
from __future__ import annotations

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


def atomic_write_json(obj, path: Path) -> None:
    _atomic(path, lambda f: f.write((json.dumps(obj, indent=1, sort_keys=False) + "\n").encode()))


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
