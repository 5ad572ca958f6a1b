"""The claims ledger: each claim of the papers the book reproduces, with the verdicts of the pages that test it.

The claims page shows it as a dashboard (our numbers beside the paper's, the verdict, the gap against its
threshold, the page as a link; the full evidence collapsed), and the landing page leads with its counts, so
the two always agree.
"""
from __future__ import annotations

import html
import json
import re
from pathlib import Path

from . import experiments as ex
from . import dual, paper, robust
from .data import REPO
from .report import Verdict, combine, load_verdicts

CHAPTER_PRESETS = ("smoke", "cpu", "paper")  # a follow-up paper's chapter: the gpu preset is AdvMoE's Table 1-2 only
PAPERS = [  # every paper the book is a companion to, with its claims (empty: no chapter yet) and its presets
    dict(key="advmoe", title="AdvMoE (Zhang et al., ICCV 2023)", claims=paper.CLAIMS, presets=ex.PRESETS),
    dict(key="robust-experts", title="Robust Experts (Pavlitska et al., 2025)", claims=robust.CLAIMS,
         presets=CHAPTER_PRESETS),
    dict(key="dual-model", title="Dual-model MoE (Zhang, Xu, Hu, Wang, ICML 2025)", claims=dual.CLAIMS,
         presets=CHAPTER_PRESETS),
]
STATUSES = ("reproduced", "not reproduced", "inconclusive", "not run", "not yet covered")
DECIDED = ("reproduced", "not reproduced")


def page_title(notebook: str) -> str:
    """A page's short name, from its heading: "Table 1", "Fig. 4 and 5", "Robustness audit"."""
    cells = json.loads((REPO / "notebooks" / f"{notebook}.ipynb").read_text())["cells"]
    heading = "".join(cells[0]["source"]).splitlines()[0].lstrip("# ")
    return heading.split(":")[0]


def claims(preset: str, root: Path | None = None, listed: list[dict] | None = None) -> list[dict]:
    """One record per claim: id, text, source, status (its parts combined: reproduced only if every part is), pages
    (notebooks, in order), and parts: (verdict, the paper's numbers for it or None) for every stored verdict of a
    page that tests it."""
    stored = load_verdicts(preset, root)
    out = []
    for claim in paper.CLAIMS if listed is None else listed:
        parts = [(Verdict(**v), numbers[0] if numbers else None)
                 for nb, prefix, *numbers in claim["covered_by"]
                 for v in stored.get(nb, {}).get("verdicts", []) if v["claim"].startswith(prefix)]
        if not claim["covered_by"]:
            status = "not yet covered"
        elif not parts:
            status = "not run"
        else:
            status = combine(claim["text"], [v for v, _ in parts]).status
        out.append(dict(id=claim["id"], text=claim["text"], source=claim["source"], status=status, parts=parts,
                        pages=list(dict.fromkeys(nb for nb, *_ in claim["covered_by"]))))
    return out


def counts(records: list[dict]) -> dict[str, int]:
    """How many claims have each status, in `STATUSES` order (statuses with none left out)."""
    found = [r["status"] for r in records]
    return {s: found.count(s) for s in STATUSES if s in found}


def count_line(records: list[dict]) -> str:
    return ", ".join(f"{n} {s}" for s, n in counts(records).items())


def presets(root: Path | None = None) -> list[str]:
    """The presets whose pages stored verdicts (the book's pages were executed at them)."""
    return [p for p in ex.PRESETS if load_verdicts(p, root)]


def _number(x: float) -> str:
    return f"{x:.1f}" if abs(x) >= 1 else f"{x:.3g}"


def ours(v: Verdict) -> str:
    """Our two compared numbers ("19.6% vs 20.0%"), else what the verdict measured ("cut +74.7 %")."""
    if v.values:
        unit = "%" if v.unit == "pp" else f" {v.unit}"
        return " vs ".join(_number(x) + unit for x in v.values)
    if v.gap is not None:
        return f"{v.gap_name} {v.gap:+.1f} {v.unit}"
    return "-"


def against_threshold(v: Verdict) -> str:
    """The gap against the smallest gap the comparison can decide: how far an undecided one is from deciding."""
    if v.status == "not run":
        return "not run"
    if v.threshold is None:
        if "one seed" in v.detail:
            return "one seed: undecidable"
        plateau = re.search(r"95% interval \[[^]]+\] against the plateau margin \S+ pp", v.detail)
        return plateau.group(0).replace("+-", "±") if plateau else v.detail
    text = f"{v.gap:+.1f} vs ±{v.threshold:.1f} {v.unit}"
    return text + (f" ({v.threshold - abs(v.gap):.1f} short)" if v.status == "inconclusive" else "")


def dashboard(records: list[dict], pages: str = "../notebooks"):
    """The ledger as a table: a claim's first row holds its id, text, verdict and pages (as links), and each of its
    compared pairs has a row of its own: the comparison, our numbers, the paper's, the gap against its threshold.
    `pages`: the folder of the page notebooks, relative to where the table is shown."""
    import pandas as pd

    rows = []
    for r in records:
        claim = {"id": r["id"], "claim": f"{html.escape(r['text'])}<br><small>{html.escape(r['source'])}</small>",
                 "verdict": f"<b>{r['status']}</b>",
                 "page": "<br>".join(f'<a href="{pages}/{nb}.html">{html.escape(page_title(nb))}</a>'
                                     for nb in r["pages"]) or "-"}
        blank = dict.fromkeys(claim, "")
        for i, (v, numbers) in enumerate(r["parts"] or [(None, None)]):
            rows.append({**(blank if i else claim),
                         "comparison": html.escape(v.claim) if v else "-", "ours": ours(v) if v else "-",
                         "paper": html.escape(numbers or "-"), "gap vs threshold": against_threshold(v) if v else "-"})
    columns = ["id", "claim", "verdict", "comparison", "ours", "paper", "gap vs threshold", "page"]
    return pd.DataFrame(rows)[columns].style.hide(axis="index").set_properties(
        **{"text-align": "left", "vertical-align": "top", "white-space": "normal"})


def evidence(records: list[dict]) -> str:
    """Every part's full verdict, one collapsed block per claim (HTML)."""
    blocks = []
    for r in records:
        items = "".join(f"<li><b>{v.status}</b>: {html.escape(v.claim)} ({html.escape(v.detail)})</li>"
                        for v, _ in r["parts"]) or "<li>no verdict stored at this preset</li>"
        blocks.append(f"<details><summary><b>{r['id']}</b> {html.escape(r['text'])}: <b>{r['status']}</b></summary>"
                      f"<ul>{items}</ul></details>")
    return "\n".join(blocks)


def landing(root: Path | None = None, pages: str = "../notebooks") -> str:
    """The landing page's answer, as Markdown: per paper, the verdict counts at each preset with stored verdicts,
    and the claims decided there, each linking to its page."""
    done = presets(root)
    blocks = []
    for p in PAPERS:
        if not p["claims"]:
            blocks.append(f"**{p['title']}**: no chapter yet, so none of its claims is tested.")
            continue
        lines = [f"**{p['title']}**: {len(p['claims'])} claims."]
        ours = p.get("presets", ex.PRESETS)
        for preset in [x for x in done if x in ours]:
            records = claims(preset, root, p["claims"])
            lines.append(f"- At the `{preset}` preset: {count_line(records)}.")
            for r in records:
                if r["status"] in DECIDED:
                    links = ", ".join(f"[{page_title(nb)}]({pages}/{nb}.ipynb)" for nb in r["pages"])
                    lines.append(f"  - {r['id']} **{r['status']}**: {r['text']} ({links})")
        missing = [x for x in ours if x not in done]
        if missing:
            lines.append(f"- Not executed at the {', '.join(f'`{p}`' for p in missing)} preset"
                         f"{'s' if len(missing) > 1 else ''}.")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)
