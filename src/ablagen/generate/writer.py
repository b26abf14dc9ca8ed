"""Writing a study directory: which ``--out`` may be written, and writing it safely.

:func:`check_out` refuses an output directory that is not a study or is a study of
another model; :func:`write_study` swaps a fully written directory in, so a failure
leaves the old study untouched; :func:`add_scripts` adds scripts to a study and
lists them in its manifest (scripts first, manifest last).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from ablagen.core.errors import OutputError, StudyError
from ablagen.core.atomic import atomic_write_bytes, atomic_write_text
from ablagen.core.spec import split_model_spec
from ablagen.core.studydir import (
    MANIFEST,
    Manifest,
    VariantEntry,
    is_study_dir,
    load_manifest,
)


def check_out(out: Path, model: str, force: bool) -> None:
    """Refuse a file, a non-empty non-study directory, or (without ``force``) a
    study of another model file."""
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {str(out)!r} is a file", "give a directory path")
    if out.is_dir() and any(out.iterdir()):
        if not is_study_dir(out):
            raise StudyError(
                f"--out {str(out)!r} is not empty and not an ablagen study",
                "choose a new or empty directory (nothing was written)",
            )
        if force:
            return
        old = load_manifest(out)
        path, _ = split_model_spec(model)
        if (out / old.model.get("path", "")).resolve() != path.resolve():
            raise StudyError(
                f"{str(out)!r} is a study of {old.model.get('path')}, not of {path}",
                "pass --force to replace it, or choose another --out",
            )


def write_study(out: Path, files: dict[str, bytes]) -> None:
    """Write ``files`` into a temp dir beside ``out``, then swap it in.

    Everything an existing study holds beyond its old scripts and manifest (results,
    logs, reports) moves into the new one; a failure before the swap leaves the old
    study untouched.
    """
    parent = out.resolve().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".ablagen-tmp-{out.name}-", dir=parent))
    except OSError as exc:
        raise OutputError(
            f"cannot write to {str(out)!r} ({exc.strerror})", "choose a writable --out"
        ) from exc
    try:
        for name, data in files.items():
            (tmp / name).write_bytes(data)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise OutputError(
            f"cannot write the study to {str(out)!r} ({exc})", "choose a writable --out"
        ) from exc
    if not out.is_dir():
        tmp.rename(out)
        return
    generated = _generated_files(out)
    old = parent / f".ablagen-old-{out.name}-{tmp.name[-8:]}"
    out.rename(old)
    try:
        tmp.rename(out)
    except OSError:
        old.rename(out)
        raise
    for entry in old.iterdir():  # results, logs, reports: keyed by script hash, kept
        if entry.name not in generated and not (out / entry.name).exists():
            entry.rename(out / entry.name)
    shutil.rmtree(old)


def _generated_files(study: Path) -> set[str]:
    try:
        return {MANIFEST} | {v.script for v in load_manifest(study).variants}
    except StudyError:  # a corrupt manifest: keep every other file
        return {MANIFEST}


def add_scripts(
    study: Path,
    manifest: Manifest,
    scripts: Sequence[tuple[VariantEntry, bytes]],
    replace_kind: str,
) -> Manifest:
    """Write each ``(entry, script bytes)`` into ``study`` and list it in the manifest.

    Entries of ``replace_kind`` already listed are dropped first (an earlier set of
    the same scripts); the manifest, written last, is returned.
    """
    entries = [v for v in manifest.variants if v.kind != replace_kind]
    for entry, data in scripts:
        atomic_write_bytes(study / entry.script, data)
        entries.append(entry)
    updated = replace(
        manifest, variants=(entries[0], *sorted(entries[1:], key=lambda e: e.id))
    )
    atomic_write_text(study / MANIFEST, updated.dumps())
    return updated
