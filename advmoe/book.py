"""Regenerate the book: execute every notebook with papermill (in place, atomically), then build the site.

Stored results are reused unless `recompute`; an interrupted run loses nothing that finished (results
are written per experiment, a notebook is replaced only once it executed completely). Re-executing is
idempotent: a page whose sources and outputs come out the same as the stored ones is left untouched
(papermill's timestamps, cell ids and pandas' random table ids are not content), so `make book` on a
clean clone leaves `git status` clean, while a real change of any output still shows.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tqdm import tqdm

from .data import REPO
from .report import check_params

PAGES = ["notebooks/tab1_overall.ipynb", "notebooks/fig1_overview.ipynb", "notebooks/fig2_at_vs_eps.ipynb",
         "notebooks/tab2_autoattack.ipynb", "notebooks/tab3_moe_vit.ipynb", "notebooks/fig3_router_only.ipynb",
         "notebooks/fig4_fig5_dissection.ipynb",
         "notebooks/fig6_pathway_iou.ipynb", "notebooks/figA2_trajectory.ipynb",
         "notebooks/fig7_experts_vs_scale.ipynb", "notebooks/fig8_tabA2_model_scale.ipynb",
         "notebooks/tabA1_train_steps.ipynb",
         "notebooks/audit_robustness.ipynb",
         "notebooks/re_grid.ipynb", "notebooks/re_placement.ipynb", "notebooks/re_collapse.ipynb",
         "notebooks/re_experts.ipynb", "notebooks/re_tradeoff.ipynb",
         "notebooks/dm_vulnerability.ipynb", "notebooks/dm_rt_er.ipynb", "notebooks/dm_alpha.ipynb",
         "notebooks/dm_jtdmoe.ipynb", "notebooks/dm_certified.ipynb",
         "book/claims.ipynb", "book/intro.ipynb", "book/verdicts.ipynb", "book/reproduce.ipynb",
         "book/status.ipynb"]  # the ledger, the landing page and status read what the others wrote: last


VOLATILE = [(re.compile(r"T_[0-9a-f]{5}"), "T_"),  # pandas Styler's random table uuid (ids in its HTML and CSS)
            (re.compile(r" at 0x[0-9a-f]+>"), ">")]  # object reprs (the text/plain of a Styler)


def content(nb) -> dict:
    """What a reader sees of an executed notebook: cell types, tags, sources and outputs, without the execution
    metadata (papermill's timestamps and durations, its temporary output path, cell ids) or random table ids.
    nb: as nbformat reads it (multi-line strings joined)."""
    cells = []
    for cell in nb["cells"]:
        outputs = json.dumps(cell.get("outputs", []), sort_keys=True)
        for pattern, fixed in VOLATILE:
            outputs = pattern.sub(fixed, outputs)
        cells.append((cell["cell_type"], cell["metadata"].get("tags", []), cell["source"], outputs))
    return {"cells": cells, "parameters": nb["metadata"].get("papermill", {}).get("parameters")}


def settle(fresh: Path, stored: Path) -> bool:
    """Put a freshly executed notebook in place of the stored one if what a reader sees differs (True), else drop it
    and keep the stored file byte for byte (False).

    Papermill's injected-parameters cell is kept out of the rendered page (the parameters cell is hidden too: a
    reader sees the preset in the text and on the status page; `papermill -p` works as before); a replaced notebook
    records its own path, not the temporary one, and that cell gets a fixed id instead of papermill's random one.
    """
    import nbformat

    nb = nbformat.read(fresh, 4)
    for cell in nb.cells:
        tags = cell.metadata.setdefault("tags", [])
        if "injected-parameters" in tags:
            cell.id = "injected-parameters"
            if "remove-cell" not in tags:
                tags.append("remove-cell")
    meta = nb.metadata.get("papermill", {})
    meta["output_path"] = meta.get("input_path")
    if stored.is_file() and content(nb) == content(nbformat.read(stored, 4)):
        fresh.unlink()
        return False
    nbformat.write(nb, fresh)
    os.replace(fresh, stored)
    return True


def execute(preset: str = "cpu", device: str = "cpu", recompute: bool = False, pages: list[str] | None = None,
            progress: bool = True, jobs: int = 1) -> dict[str, float]:
    """Execute the pages; missing experiments (all of them with recompute) are first trained `jobs` at a time,
    then missing robustness audits (with their AutoAttack runs) computed the same way."""
    import papermill as pm

    from . import audit, dual, inside, robust, scale
    from .experiments import get_many, load
    from .report import audit_specs, fig2_specs, fig2_sweep, page_specs
    from .worstcase import worst_case_eval

    check_params(preset, device, recompute)
    specs = page_specs(preset)
    missing = [s for s in specs if recompute or not _stored(load, s)]
    if missing:
        tqdm.write(f"training {len(missing)} experiment(s) the pages need, {jobs} at a time")
        get_many(missing, device, recompute=recompute, progress=progress, jobs=jobs)
    unaudited = [s for s in audit_specs(preset) if audit.stored(s) is None]  # retraining drops a model's audit
    if unaudited:
        tqdm.write(f"auditing {len(unaudited)} model(s) (AutoAttack included), {jobs} at a time")
        get_many(unaudited, device, progress=progress, jobs=jobs, task=audit.audit)
    tqdm.write("worst-case robust accuracy of every model (stored ones are reused)")
    get_many(specs, device, progress=progress, jobs=jobs, task=worst_case_eval)
    tqdm.write("eps sweeps of the Fig. 2 models (stored ones are reused)")
    get_many(fig2_specs(preset), device, progress=progress, jobs=jobs, task=fig2_sweep)
    tqdm.write("Fig. 3-6: router-only and backbone-only AT chains, dissections, masks (stored ones are reused)")
    inside.precompute(preset, device, jobs, progress)
    shown = [key for key, page in scale.PAGES.items() if page in (pages or PAGES)]
    tqdm.write(f"scale pages ({', '.join(shown) or 'none in the book yet'}): their models (stored ones are reused)")
    scale.precompute(preset, device, jobs, progress, shown)
    if any(page.startswith("notebooks/re_") for page in pages or PAGES):
        tqdm.write("Robust Experts: every model and evaluation of the chapter (stored ones are reused)")
        robust.precompute(preset, device, jobs, progress)
    if any(page.startswith("notebooks/dm_") for page in pages or PAGES):
        tqdm.write("Dual-model MoE: every model and evaluation of the chapter (stored ones are reused)")
        dual.precompute(preset, device, jobs, progress)
    times = {}
    for page in tqdm(pages or PAGES, desc="notebooks", disable=not progress):
        path = REPO / page
        # recompute already happened above; eps sweeps of retrained models were dropped with their old model
        params = {"preset": preset} if page.startswith("book/") else {"preset": preset, "device": device,
                                                                        "recompute": False}
        fd, tmp = tempfile.mkstemp(suffix=".ipynb", dir=path.parent, prefix=f".{path.stem}.")
        os.close(fd)
        t0 = time.perf_counter()
        try:
            # Relative paths keep this machine's folders out of the committed notebook's metadata.
            pm.execute_notebook(os.path.relpath(path), os.path.relpath(tmp), parameters=params,
                                cwd=os.path.relpath(path.parent), progress_bar=False, kernel_name="python3")
            changed = settle(Path(tmp), path)
        finally:
            Path(tmp).unlink(missing_ok=True)
        times[page] = time.perf_counter() - t0
        tqdm.write(f"{page}: {times[page]:.0f}s, {'updated' if changed else 'unchanged'}")
    return times


def _stored(load, spec) -> bool:
    try:
        load(spec)
        return True
    except FileNotFoundError:
        return False


def build(strict: bool = True) -> Path:
    """jupyter-book build of the repository root (stored outputs only; warnings are errors)."""
    exe = Path(sys.executable).with_name("jupyter-book")
    cmd = [str(exe), "build", str(REPO), "--path-output", str(REPO)] + (["--warningiserror", "--keep-going"] if strict else [])
    subprocess.run(cmd, check=True)
    return REPO / "_build" / "html" / "index.html"
