"""The book build reads only the book's own sources, whatever else sits in the checkout."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
JUPYTER_BOOK = Path(sys.executable).with_name("jupyter-book")


@pytest.mark.skipif(not JUPYTER_BOOK.is_file(), reason="jupyter-book not installed (pip install -e .[book])")
@pytest.mark.parametrize("folder", [".env", ".tox/py311"])
def test_markdown_in_a_hidden_folder_does_not_break_the_strict_build(folder, tmp_path):
    hidden = ROOT / folder
    top = ROOT / folder.split("/")[0]
    if top.exists():
        pytest.skip(f"{top} exists in this checkout; not touching it")
    (hidden / "lib").mkdir(parents=True)
    # read, this would fail the strict build twice: a heading that skips levels, and a page outside the toc
    (hidden / "lib" / "README.md").write_text("### skipped levels\n\ntext\n")
    try:
        out = subprocess.run([str(JUPYTER_BOOK), "build", str(ROOT), "--path-output", str(tmp_path),
                              "--warningiserror", "--keep-going"], capture_output=True, text=True)
    finally:
        shutil.rmtree(top)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert folder.split("/")[0] not in out.stdout
    assert (tmp_path / "_build" / "html" / "index.html").is_file()
