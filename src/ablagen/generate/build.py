"""``ablagen generate``: model file -> study directory (scripts + manifest), atomically.

The work is split by concern: :mod:`~ablagen.generate.request` (what is asked for and
what the manifest records), :mod:`~ablagen.generate.command` (the CLI spelling),
:mod:`~ablagen.generate.prepare` (load, trace, forward pass, embed),
:mod:`~ablagen.generate.writer` (output policy, directory swap). This module plans the
variants, renders every script into memory and hands the files to the writer.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ablagen import __version__
from ablagen.analyze import Inventory
from ablagen.generate.command import regenerate_command
from ablagen.generate.context import AblationSpec
from ablagen.generate.knockout_mode import render_knockout
from ablagen.generate.request import MODES, GenerateOptions, StudyConfig
from ablagen.generate.variants import (
    ablation_spec,
    keep_in_place,
    parse_kinds,
    parse_methods,
    plan_variants,
    script_names,
)
from ablagen.generate.prepare import Prepared, prepare
from ablagen.generate.screen_mode import render_screen
from ablagen.generate.writer import check_out, write_study
from ablagen.core.atomic import sha256_bytes
from ablagen.analyze.loading import LoadedModel
from ablagen.core.studydir import BASELINE_ID, MANIFEST, Manifest, VariantEntry

__all__ = [
    "MODES",
    "GenerateOptions",
    "GeneratedStudy",
    "Prepared",
    "StudyConfig",
    "generate_study",
    "prepare",
    "regenerate_command",
    "write_study",
]


@dataclass(frozen=True)
class GeneratedStudy:
    out: Path
    manifest: Manifest
    inventory: Inventory
    warnings: tuple[str, ...]
    prepared: Prepared  # renders more scripts of this study (the arms)

    @property
    def config(self) -> StudyConfig:
        return self.prepared.config


def generate_study(opts: GenerateOptions) -> GeneratedStudy:
    """Render every script into memory, then write the study directory in one swap."""
    kinds, methods = parse_kinds(opts.kinds), parse_methods(opts.methods)
    check_out(opts.out.resolve(), opts.model, opts.force)
    prepared = prepare(opts)
    opts, loaded, inventory = prepared.opts, prepared.loaded, prepared.inventory
    pairs = plan_variants(inventory, kinds, opts.components, methods)
    specs = [
        keep_in_place(ablation_spec(comp, method), loaded.model, loaded.example_inputs)
        for comp, method in pairs
    ]
    names = script_names([s.variant_id for s in specs])
    files: dict[str, bytes] = {}
    entries: list[VariantEntry] = []
    for spec in [None, *specs] if opts.mode == "retrain" else [None]:
        name = "baseline.py" if spec is None else names[spec.variant_id]
        data_bytes = prepared.render(
            name,
            BASELINE_ID if spec is None else spec.variant_id,
            _title(spec, loaded),
            _description(spec),
            ablations=() if spec is None else (spec,),
        )
        files[name] = data_bytes
        entries.append(_entry(spec, name, sha256_bytes(data_bytes)))
    if opts.mode == "knockout":  # one knockout.py scores every variant
        knockout_files, entries = render_knockout(
            prepared.env,
            prepared.base,
            specs,
            loaded,
            inventory,
            opts.templates is not None,
        )
        files.update(knockout_files)
    if opts.mode == "screen":  # one screen.py estimates every variant
        screen_files, entries = render_screen(
            prepared.env,
            prepared.base,
            specs,
            loaded,
            inventory,
            opts.templates is not None,
        )
        files.update(screen_files)
    manifest = Manifest(
        ablagen_version=__version__,
        mode=opts.mode,
        model={
            "path": prepared.model.path,
            "sha256": loaded.sha256,
            "name": loaded.ref.name,
            "label": loaded.ref.label,
            "parameters": [[n, list(s)] for n, s in inventory.parameters],
            "traced": inventory.traced,
        },
        config=prepared.config.to_manifest(),
        variants=(entries[0], *sorted(entries[1:], key=lambda e: e.id)),
        components=tuple(c.to_json() for c in inventory.components),
    )
    files[MANIFEST] = manifest.dumps().encode("utf-8")
    write_study(opts.out, files)
    return GeneratedStudy(opts.out, manifest, inventory, inventory.warnings, prepared)


def _entry(spec: AblationSpec | None, script: str, digest: str) -> VariantEntry:
    if spec is None:
        return VariantEntry(BASELINE_ID, None, "baseline", None, script, digest)
    return VariantEntry(
        spec.variant_id, spec.component_id, spec.kind, spec.method, script, digest
    )


def _title(spec: AblationSpec | None, loaded: LoadedModel) -> str:
    if spec is None:
        return f"Baseline training run of {loaded.ref.label}: nothing ablated."
    return f"Ablation {spec.variant_id} of {loaded.ref.label}."


def _description(spec: AblationSpec | None) -> tuple[str, ...]:
    if spec is None:
        return (
            "Every ablation variant of this study is compared with this run, seed by seed.",
        )
    return (
        f"{spec.component_id} ({spec.op} {spec.kind}) -- {spec.method}: {spec.summary}.",
    )
