"""The study directory: its file names, the manifest format and its validation.

A study directory holds one standalone script per variant plus ``manifest.json``::

    {
      "format": 1,
      "ablagen_version": "0.1.0",
      "mode": "retrain",
      "model": {"path": "../../examples/digits_cnn.py", "sha256": "...", "name": "...",
                "parameters": [["conv1.weight", [8, 1, 3, 3]], ...]},
      "components": [                         # the inventory, see ablagen.analyze
        {"id": "conv1", "kind": "layer", "op": "Conv2d", "module": "conv1",
         "param_owner": "conv1", "units": null, "methods": ["zero", "mean"], ...},
        {"id": "fc1[0:8]", "kind": "neuron", "module": "fc1", "param_owner": "fc1",
         "units": [0, 8], "methods": ["mask"], ...}
      ],
      "config": {...},                       # every generate option, JSON-able
      "variants": [                           # baseline first, then sorted by id
        {"id": "baseline", "component": null, "kind": "baseline", "method": null,
         "script": "baseline.py", "sha256": "..."},
        {"id": "conv1:zero", "component": "conv1", "kind": "layer", "method": "zero",
         "script": "conv1__zero.py", "sha256": "..."}
      ]
    }

``model.path`` is relative to the study directory. Everything the orchestrator,
the ranking and the report need is read through :func:`load_manifest`.

Every script follows one contract: ``python SCRIPT [--epochs N] [--seed S]
[--device cpu|cuda] [--out FILE] [--batch-size B] [--lr LR]``; it writes one JSON
object (the *result*) to ``--out`` (and prints a summary to stdout)::

    {
      "schema": 1, "variant": "conv1:zero", "status": "ok" | "diverged" | "failed",
      "seed": 0, "epochs": 5, "device": "cpu",
      "history": [{"epoch": 1, "train_loss": .., "train_acc": .., "val_loss": ..,
                   "val_acc": .., "lr": ..}, ...],
      "final": {"train_loss": .., "train_acc": .., "val_loss": .., "val_acc": ..},
      "epochs_to_target": null | int,
      "params_total": int, "params_effective": int, "model_bytes": int,
      "peak_memory_bytes": int, "samples_per_s": float, "wall_time_s": float,
      "error": null | str
    }

and exits with :data:`EXIT_OK`, :data:`EXIT_FAILED` or :data:`EXIT_DIVERGED`.
"""

from __future__ import annotations

import hashlib
import json
import shlex
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ablagen.core.errors import StudyError

MANIFEST = "manifest.json"
RESULTS_DB = "results.sqlite"
LOGS_DIR = "logs"
MANIFEST_FORMAT = 1
BASELINE_ID = "baseline"
ABLATION_KINDS = ("layer", "block", "activation", "neuron", "head")  # ranked
ARM_KIND = "arm"  # importance-guided training arms (ablagen hybrid), never ranked
RESULT_SCHEMA = 1
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_DIVERGED = 3


@dataclass(frozen=True)
class VariantEntry:
    id: str
    component: str | None
    kind: str
    method: str | None
    script: str
    sha256: str
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        if not data["extra"]:
            del data["extra"]
        return data


@dataclass(frozen=True)
class Manifest:
    ablagen_version: str
    mode: str
    model: dict[str, Any]
    config: dict[str, Any]
    variants: tuple[VariantEntry, ...]
    components: tuple[dict[str, Any], ...] = ()
    format: int = MANIFEST_FORMAT

    def component(self, component_id: str) -> dict[str, Any] | None:
        for comp in self.components:
            if comp["id"] == component_id:
                return comp
        return None

    def variant(self, variant_id: str) -> VariantEntry:
        for entry in self.variants:
            if entry.id == variant_id:
                return entry
        known = ", ".join(v.id for v in self.variants[:8])
        raise StudyError(
            f"unknown variant id {variant_id!r}",
            f"use one of the manifest's ids ({known}{', ...' if len(self.variants) > 8 else ''})",
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "ablagen_version": self.ablagen_version,
            "mode": self.mode,
            "model": self.model,
            "config": self.config,
            "components": list(self.components),
            "variants": [v.to_json() for v in self.variants],
        }

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2, sort_keys=True) + "\n"


def is_study_dir(path: Path) -> bool:
    return (path / MANIFEST).is_file()


def load_manifest(study_dir: str | Path) -> Manifest:
    """Read and validate ``study_dir/manifest.json``; every failure is a StudyError."""
    study = Path(study_dir)
    if study.is_file():
        made = (
            f" (`ablagen study {study}` writes studies/{study.stem}, "
            f"`ablagen generate {study}` generated/{study.stem})"
            if study.suffix == ".py"
            else ""
        )
        raise StudyError(
            f"{str(study)!r} is a file, not a study directory",
            f"point at the directory a study was written to{made}",
        )
    if not study.is_dir():
        raise StudyError(
            f"study directory {str(study)!r} does not exist",
            "create it with `ablagen generate MODEL --out DIR`",
        )
    path = study / MANIFEST
    if not path.is_file():
        raise StudyError(
            f"{str(study)!r} is not an ablagen study (no {MANIFEST})",
            "point at a directory made by `ablagen generate`, or regenerate it",
        )
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        variants = tuple(
            VariantEntry(
                id=str(v["id"]),
                component=v.get("component"),
                kind=str(v["kind"]),
                method=v.get("method"),
                script=str(v["script"]),
                sha256=str(v["sha256"]),
                extra=dict(v.get("extra", {})),
            )
            for v in raw["variants"]
        )
        manifest = Manifest(
            format=int(raw["format"]),
            ablagen_version=str(raw["ablagen_version"]),
            mode=str(raw["mode"]),
            model=dict(raw["model"]),
            config=dict(raw["config"]),
            variants=variants,
            components=tuple(dict(c) for c in raw.get("components", [])),
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StudyError(
            f"{path} is corrupt ({type(exc).__name__}: {exc})",
            "regenerate the study with `ablagen generate ... --force`",
        ) from exc
    if manifest.format != MANIFEST_FORMAT:
        raise StudyError(
            f"{path} has manifest format {manifest.format}, this ablagen reads {MANIFEST_FORMAT}",
            "regenerate the study with this version of ablagen",
        )
    for entry in variants:
        script = study / entry.script
        if Path(entry.script).name != entry.script or not script.is_file():
            raise StudyError(
                f"{path} lists script {entry.script!r} that is not in the study",
                "regenerate the study with `ablagen generate ... --force`",
            )
    return manifest


def model_changed(study_dir: str | Path, manifest: Manifest) -> str | None:
    """One line when the model file changed since the study was generated (its
    hash is not the manifest's): the scripts embed the old model. None when it is
    unchanged, or gone (the scripts still run what they embed)."""
    study = Path(study_dir)
    path = study / str(manifest.model.get("path", ""))
    try:  # hashed as the loader hashes it: the text, newlines translated
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    if hashlib.sha256(text.encode("utf-8")).hexdigest() == manifest.model.get("sha256"):
        return None
    command = manifest.config.get("command") or "ablagen generate MODEL --out . --force"
    return (
        f"{manifest.model['path']} changed since {study} was generated: its scripts "
        f"still train the old model; regenerate with `cd {shlex.quote(str(study))} && "
        f"{command}`"
    )


def split_result(
    result: dict[str, Any], variant_ids: list[str]
) -> dict[str, dict[str, Any]]:
    """One script-contract result per manifest entry, from one ``knockout.py`` result.

    Each keeps the run's fields (seed, epochs, device, params_total, wall_time_s, ...)
    and takes ``status``, ``final``, ``params_effective`` and ``error`` from its entry of
    ``result["variants"]``; only the baseline keeps the training ``history``. An entry
    the run did not score (it failed before, e.g. a bad --checkpoint) gets the run's
    status and error.
    """
    shared = {
        key: value
        for key, value in result.items()
        if key not in ("variants", "history")
    }
    scored = result.get("variants") or {}
    split = {}
    for vid in variant_ids:
        own = scored.get(vid) or {
            "status": result.get("status", "failed"),
            "final": None,
            "error": result.get("error"),
        }
        split[vid] = {
            **shared,
            "variant": vid,
            "status": own["status"],
            "final": own["final"],
            "params_effective": own.get("params_effective", result.get("params_total")),
            "error": own.get("error"),
            "history": result.get("history", []) if vid == BASELINE_ID else [],
        }
    return split
