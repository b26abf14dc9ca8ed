"""Helpers for the orchestrator tests: small, real study directories.

The generator is not needed: a study is a folder of contract-following scripts
(copies of ``fixtures/orchestrate/fake_script.py`` with their constants rewritten,
or ``tiny_torch.py``) plus a ``manifest.json`` written with :class:`Manifest`.
"""

from __future__ import annotations

import re
import sqlite3
from collections import Counter
from pathlib import Path

from ablagen.core.atomic import sha256_file
from ablagen.core.studydir import MANIFEST, RESULTS_DB, Manifest, VariantEntry

FIXTURES = Path(__file__).parent / "fixtures" / "orchestrate"
FAKE = FIXTURES / "fake_script.py"
TINY_TORCH = FIXTURES / "tiny_torch.py"


def fake_script(variant: str, behavior: str = "ok", sleep: float = 0.0) -> str:
    text = FAKE.read_text()
    text = re.sub(
        r"^VARIANT = .*$", f"VARIANT = {variant!r}", text, count=1, flags=re.M
    )
    text = re.sub(
        r"^BEHAVIOR = .*$", f"BEHAVIOR = {behavior!r}", text, count=1, flags=re.M
    )
    return re.sub(r"^SLEEP = .*$", f"SLEEP = {sleep!r}", text, count=1, flags=re.M)


def script_name(variant: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "__", variant).strip("_") + ".py"


def write_manifest(
    study: Path, variant_ids: list[str], config: dict | None = None
) -> Manifest:
    variants = tuple(
        VariantEntry(
            id=vid,
            component=None if vid == "baseline" else vid.split(":")[0],
            kind="baseline" if vid == "baseline" else "layer",
            method=None if vid == "baseline" else vid.split(":")[-1],
            script=script_name(vid),
            sha256=sha256_file(study / script_name(vid)),
        )
        for vid in variant_ids
    )
    manifest = Manifest(
        ablagen_version="0.1.0",
        mode="retrain",
        model={"path": "model.py", "sha256": "0" * 64, "name": "Fake"},
        config=config or {},
        variants=variants,
    )
    (study / MANIFEST).write_text(manifest.dumps())
    return manifest


def make_study(
    study: Path,
    behaviors: dict[str, str | tuple[str, float]],
    config: dict | None = None,
) -> Path:
    """A study with one fake script per variant: ``{"baseline": "ok", "a:zero": ("hang", 0)}``."""
    study.mkdir(parents=True, exist_ok=True)
    for vid, how in behaviors.items():
        behavior, sleep = (how, 0.0) if isinstance(how, str) else how
        (study / script_name(vid)).write_text(fake_script(vid, behavior, sleep))
    write_manifest(study, list(behaviors), config)
    return study


def make_torch_study(study: Path) -> Path:
    study.mkdir(parents=True, exist_ok=True)
    (study / "baseline.py").write_text(TINY_TORCH.read_text())
    write_manifest(study, ["baseline"])
    return study


def run_collecting(study: Path, options, **kwargs) -> tuple:
    """``run_study`` and the records of the runs it finished, in finishing order (from
    its "finished" events: the summary keeps only the failures' records)."""
    from ablagen.orchestrate import run_study

    records = []

    def progress(event) -> None:
        if event.event == "finished":
            records.append(event.record)

    return run_study(study, options, progress=progress, **kwargs), records


def counter(study: Path) -> Counter[str]:
    """How many times each (variant, seed) finished: lines the scripts append."""
    path = study / "counter.txt"
    lines = path.read_text().splitlines() if path.exists() else []
    return Counter(lines)


def db_rows(study: Path) -> list[tuple]:
    """(variant_id, seed, status, result_json) of every row, read with plain sqlite3."""
    conn = sqlite3.connect(study / RESULTS_DB)
    try:
        return sorted(
            conn.execute("SELECT variant_id, seed, status, result_json FROM runs")
        )
    finally:
        conn.close()


def session_pids(sid: int) -> list[int]:
    """Live (non-zombie) processes of session ``sid``: the orchestrator and all it started."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":
            pids.append(int(entry.name))
    return pids
