"""README's first hour on a fresh clone: `make book` leaves `git status` clean, and a smoke `advmoe run` then stores
its result; the dirty-tree guard looks at the code (advmoe/, benchmarks/, pyproject.toml), not at executed pages."""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from advmoe import data as datalib
from advmoe.book import PAGES

ROOT = Path(__file__).resolve().parents[1]
VENV = Path(sys.executable).parent.parent
RUN = ["--preset", "smoke", "--only", "s-dense-r0.5-at", "--seeds", "0"]


def git(*args, cwd: Path) -> str:
    return subprocess.run(["git", "-c", "user.name=test", "-c", "user.email=test@localhost", *args], cwd=cwd,
                          check=True, capture_output=True, text=True).stdout


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    """A clone of this checkout with its uncommitted changes committed there: the tree CI would get."""
    if not (datalib.data_dir() / "cifar10-jpeg").is_dir() and os.environ.get("CI") != "true":
        pytest.skip("the CIFAR-10 JPEG copy is not unpacked (advmoe fetch cifar10-jpeg); CI always has it")
    if not (VENV / ".installed").is_file():
        pytest.skip("not running from the Makefile's .venv (make install)")
    path = tmp_path_factory.mktemp("fresh") / "advmoe"
    git("clone", "-q", str(ROOT), str(path), cwd=ROOT)
    diff = subprocess.run(["git", "diff", "HEAD", "--binary"], cwd=ROOT, check=True, capture_output=True).stdout
    if diff:
        subprocess.run(["git", "apply", "--whitespace=nowarn"], cwd=path, input=diff, check=True)
    for name in git("ls-files", "--others", "--exclude-standard", cwd=ROOT).splitlines():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, path / name)
    git("add", "-A", cwd=path)
    git("commit", "-q", "--allow-empty", "-m", "the working tree under test", cwd=path)
    return path


def env(clone: Path) -> dict:
    """The clone's package first on the path (the shared .venv's editable install points at this checkout)."""
    keep = {k: v for k, v in os.environ.items() if not k.startswith("ADVMOE_") or k == "ADVMOE_NUMERICS"}
    return {**keep, "PYTHONPATH": str(clone), "ADVMOE_DATA": str(datalib.data_dir()), "TQDM_DISABLE": "1"}


def advmoe(clone: Path, *args) -> subprocess.CompletedProcess:
    return subprocess.run([str(VENV / "bin" / "advmoe"), *args], cwd=clone, env=env(clone), capture_output=True,
                          text=True, timeout=600)


def test_make_book_leaves_the_clone_clean_then_a_smoke_run_stores_its_result(clone):
    # README's first command, with the .venv this suite runs in (-o: not reinstalled into it)
    book = subprocess.run(["make", "-o", f"{VENV}/.installed", "book", f"VENV={VENV}"], cwd=clone, env=env(clone),
                          capture_output=True, text=True, timeout=1500)
    assert book.returncode == 0, book.stdout[-3000:] + book.stderr[-3000:]
    assert (clone / "_build" / "html" / "index.html").is_file()
    assert git("status", "--porcelain", cwd=clone) == "", "make book changed the tracked tree"
    pages = re.findall(r"^(\S+\.ipynb): \d+s, (updated|unchanged)$", book.stdout, re.M)
    assert len(pages) == len(PAGES) and all(what == "unchanged" for _, what in pages), pages

    # an executed page edited by hand is not code: the guard lets a run store its result, marked clean
    page = clone / "notebooks" / "tab1_overall.ipynb"
    page.write_text(page.read_text().replace("Table 1", "Table 1 (edited)", 1))
    run = advmoe(clone, "run", *RUN)
    assert run.returncode == 0, run.stderr[-3000:]
    stored = list((clone / "results" / "smoke").glob("*s-dense-r0.5-at-s0-*/metrics.json"))
    assert len(stored) == 1 and json.loads(stored[0].read_text())["provenance"]["git_dirty"] is False

    # a change to the package is: the same run is refused in one line, naming the way out
    init = clone / "advmoe" / "__init__.py"
    init.write_text(init.read_text() + "\n# edited\n")
    refused = advmoe(clone, "run", *RUN, "--recompute")
    assert refused.returncode == 2 and refused.stderr.strip().count("\n") == 0, refused.stderr
    assert "advmoe, benchmarks, pyproject.toml) has uncommitted changes" in refused.stderr
    assert "--allow-dirty" in refused.stderr
