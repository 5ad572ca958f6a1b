"""Regenerate the book: execute every notebook with papermill (in place, atomically), then build the site.

Stored results are reused unless `recompute`; an interrupted run loses nothing that finished (results
are written per experiment, a notebook is replaced only once it executed completely).
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tqdm.auto import tqdm

from .data import REPO
from .report import check_params

PAGES = ["notebooks/tab1_overall.ipynb", "notebooks/fig1_overview.ipynb", "notebooks/fig2_at_vs_eps.ipynb",
         "book/claims.ipynb", "book/status.ipynb"]  # the ledger and status read what the others wrote: last


def execute(preset: str = "cpu", device: str = "cpu", recompute: bool = False, pages: list[str] | None = None,
            progress: bool = True) -> dict[str, float]:
    import papermill as pm

    check_params(preset, device, recompute)
    times = {}
    for page in tqdm(pages or PAGES, desc="notebooks", disable=not progress):
        path = REPO / page
        params = {"preset": preset} if page.startswith("book/") else {"preset": preset, "device": device,
                                                                        "recompute": recompute}
        fd, tmp = tempfile.mkstemp(suffix=".ipynb", dir=path.parent, prefix=f".{path.stem}.")
        os.close(fd)
        t0 = time.perf_counter()
        try:
            # Relative paths keep this machine's folders out of the committed notebook's metadata.
            pm.execute_notebook(os.path.relpath(path), os.path.relpath(tmp), parameters=params,
                                cwd=os.path.relpath(path.parent), progress_bar=False, kernel_name="python3")
            os.replace(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)
        times[page] = time.perf_counter() - t0
        tqdm.write(f"{page}: {times[page]:.0f}s")
    return times


def build(strict: bool = True) -> Path:
    """jupyter-book build of the repository root (stored outputs only; warnings are errors)."""
    exe = Path(sys.executable).with_name("jupyter-book")
    cmd = [str(exe), "build", str(REPO), "--path-output", str(REPO)] + (["--warningiserror", "--keep-going"] if strict else [])
    subprocess.run(cmd, check=True)
    return REPO / "_build" / "html" / "index.html"
