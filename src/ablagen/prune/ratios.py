"""``ablagen prune``: a ranked study -> one ``pruned_<ratio>.py`` per ratio, run, summed up.

The scripts go to ``STUDY/prune/``: each is the baseline's own training code (as
``knockout.py`` carries it), then its plan as data (``PLAN``: kept channels per layer,
chosen by Torch-Pruning's groups and ablagen's measured importance) applied with plain
torch, the size and CPU-latency measurements, and a short fine-tuning loop. The plan
is data rather than a Torch-Pruning replay because a reader sees exactly what is
removed, the script needs nothing beyond torch, and a future Torch-Pruning release
cannot change what an old script does. ``prune.json`` holds every run's figures and
their means with 95 % t-intervals over seeds; ``prune.png`` plots accuracy against MACs.
"""

from __future__ import annotations

import ast
import inspect
import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ablagen.generate.context import ScriptContext
from ablagen.generate.knockout_mode import top_template_is
from ablagen.generate.prepare import Prepared
from ablagen.generate.render import render_script
from ablagen.core.errors import ConfigError
from ablagen.core.atomic import atomic_write_bytes, atomic_write_text
from ablagen.prune import surgery
from ablagen.prune.plot import PRUNE_PNG, plot_prune
from ablagen.prune.plan import PruneError, PrunePlan, check_ratio, make_plan

PRUNE_DIR = "prune"
PRUNE_JSON = "prune.json"
PRUNED_TEMPLATE = "pruned.py.j2"
FIGURES = ("params", "macs", "latency_ms_b1", "latency_ms_b64", "val_acc", "val_loss")


@dataclass(frozen=True)
class PruneOptions:
    ratios: tuple[float, ...] = (0.3, 0.5, 0.7)
    finetune_epochs: int = 2
    seeds: tuple[int, ...] = (0,)
    epochs: int | None = None  # the baseline's training epochs; None: the study's
    run: bool = True

    def validate(self) -> "PruneOptions":
        if not self.ratios:
            raise ConfigError("no pruning ratio given", "pass --ratios 0.3,0.5,0.7")
        for ratio in self.ratios:
            check_ratio(ratio)
        if self.finetune_epochs < 0:
            raise ConfigError(
                f"--finetune-epochs {self.finetune_epochs} is negative",
                "give 0 or more",
            )
        return self


@dataclass
class PruneOutcome:
    scripts: list[Path]
    summary: dict = field(default_factory=dict)
    json_path: Path | None = None


def script_name(ratio: float) -> str:
    return f"pruned_{ratio:g}.py"


def surgery_source() -> str:
    """:mod:`ablagen.prune.surgery`'s functions, as the scripts carry them."""
    source = inspect.getsource(surgery)
    tree = ast.parse(source)
    parts = [
        ast.get_source_segment(source, node)
        for node in tree.body
        if isinstance(node, ast.FunctionDef)
    ]
    return "\n\n\n".join(p for p in parts if p)


def render_pruned(
    prepared: Prepared, plan: PrunePlan, criterion: str, finetune_epochs: int
) -> bytes:
    """One formatted ``pruned_<ratio>.py`` for ``plan``."""
    if prepared.data.streamed or not prepared.config.train.scores_accuracy:
        raise PruneError(
            "ablagen prune supports classification studies on in-memory data so far",
            "prune a study whose model file gives build_data() or a built-in DATASET",
        )
    layers = len(plan.layers)
    heads = any("set" in kept for kept in plan.layers.values())
    units = "channels and attention heads" if heads else "channels"
    ctx = ScriptContext(
        script_name=script_name(plan.ratio),
        variant_id=f"pruned:{plan.ratio:g}",
        title=f"Pruned {prepared.loaded.ref.label}: {plan.ratio:.0%} of the {units} of each group removed.",
        description=(
            "Trains the baseline exactly like baseline.py (or loads it from --checkpoint),",
            f"keeps the {units} PLAN lists ({layers} modules;",
            f"chosen by {criterion} over Torch-Pruning's dependency groups),",
            "slices the weights with plain torch, re-measures BatchNorm statistics on the",
            "training data (if any), measures parameters, MACs and CPU latency (batch 1",
            "and 64), then fine-tunes for --finetune-epochs and measures again (result:",
            "before, pruned, finetuned).",
        ),
        ablations=(),
        extra={
            "knockouts": (),  # trains its baseline once, like knockout.py: no --resume-from
            "plan": plan.layers,
            "ratio": plan.ratio,
            "criterion": criterion,
            "finetune_epochs": finetune_epochs,
            "surgery_source": surgery_source(),
        },
        **{
            **prepared.base,  # prepared for STUDY/prune: its paths start there
            "regenerate_command": f"ablagen prune .. --ratios {plan.ratio:g} --finetune-epochs {finetune_epochs} --no-run",
        },
    )  # fmt: skip
    env = top_template_is(prepared.env, PRUNED_TEMPLATE)
    return render_script(env, ctx).encode("utf-8")


def prune_study(
    study_dir: str | Path,
    options: PruneOptions,
    progress: Callable[[str], None] = lambda line: None,
) -> PruneOutcome:
    """Plans from the study's ranking, the scripts, and (``options.run``) their runs."""
    from ablagen.arms.hybrid import prepare_recorded
    from ablagen.prune.importance import (
        MeasuredImportance,
        attention_heads,
        unit_scores,
    )
    from ablagen.rank.ranking import load_ranking
    from ablagen.core.studydir import load_manifest

    options.validate()
    study = Path(study_dir).resolve()
    manifest = load_manifest(study)
    ranking = load_ranking(study)
    scores = unit_scores(ranking, manifest)
    if not scores:
        raise PruneError(
            f"{study.name}'s ranking has no ranked channels, neurons or heads",
            "generate the study with --kinds neurons or heads (knockout or screen mode), run and rank it",
        )
    heads = attention_heads(manifest)
    prepared = prepare_recorded(study, manifest, study / PRUNE_DIR)
    model, example = prepared.loaded.model, prepared.loaded.example_inputs[0]

    def measured(graph, names):
        return MeasuredImportance(scores, names, graph.is_out_channel_pruning_fn)

    out = study / PRUNE_DIR
    rendered = {}
    for ratio in options.ratios:
        plan = make_plan(model, example, measured, ratio, heads=heads)
        rendered[script_name(ratio)] = render_pruned(
            prepared, plan, "ablagen's measured importance", options.finetune_epochs
        )
    out.mkdir(exist_ok=True)
    scripts = []
    for name, data in rendered.items():
        atomic_write_bytes(out / name, data)
        scripts.append(out / name)
    outcome = PruneOutcome(scripts)
    if options.run:
        runs = {}
        for path in scripts:
            for seed in options.seeds:
                progress(f"running {path.name} --seed {seed}")
                runs.setdefault(path.name, []).append(
                    run_script(path, seed, options, out / "results")
                )
        outcome.summary = summarize(runs, options)
        outcome.json_path = out / PRUNE_JSON
        text = json.dumps(outcome.summary, indent=2, sort_keys=True) + "\n"
        atomic_write_text(outcome.json_path, text)
        atomic_write_bytes(out / PRUNE_PNG, plot_prune(outcome.summary))
        refresh_report(study)
    return outcome


def refresh_report(study: Path) -> Path | None:
    """Write the study's ``report.md`` and ``report.html`` again, now with their
    Pruning section (from ``prune.json``), keeping the sections a caller added
    after Reproduce; nothing where ``ablagen rank`` wrote no report yet."""
    from ablagen.arms.noise_scales import NOISE_SCALES_JSON, load_noise_scales
    from ablagen.core.studydir import load_manifest
    from ablagen.rank.ranking import load_ranking, load_records
    from ablagen.report.markdown import REPORT_MD, report_extra_sections, write_report

    report = study / REPORT_MD
    if not report.is_file():
        return None
    noise = load_noise_scales(study) if (study / NOISE_SCALES_JSON).is_file() else None
    return write_report(
        study,
        load_manifest(study),
        load_ranking(study),
        load_records(study),
        report_extra_sections(report.read_text()),
        noise=noise,
    )


def run_script(path: Path, seed: int, options: PruneOptions, results: Path) -> dict:
    """One run of a pruned script; its result JSON (status "failed" if none came)."""
    results.mkdir(exist_ok=True)
    result_file = results / f"{path.stem}_seed{seed}.json"
    cmd = [sys.executable, path.name, "--seed", str(seed), "--out", str(result_file)]
    cmd += ["--finetune-epochs", str(options.finetune_epochs)]
    if options.epochs is not None:
        cmd += ["--epochs", str(options.epochs)]
    done = subprocess.run(cmd, cwd=path.parent, capture_output=True, text=True)
    if result_file.is_file():
        return json.loads(result_file.read_text())
    tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
    return {"status": "failed", "seed": seed, "error": tail[0]}


def summarize(runs: dict[str, list[dict]], options: PruneOptions) -> dict:
    """Per script: every run, and mean with a 95 % t-interval of each figure."""
    table = {}
    for name, results in runs.items():
        ok = [r for r in results if r.get("status") == "ok"]
        stats = {}
        for stage in ("before", "pruned", "finetuned"):
            for figure in FIGURES:
                values = [
                    r[stage][figure] for r in ok if r[stage].get(figure) is not None
                ]
                if values:
                    stats[f"{stage}.{figure}"] = _mean_ci(values)
        table[name] = {
            "ratio": ok[0]["ratio"] if ok else None,
            "runs": len(results),
            "ok": len(ok),
            "stats": stats,
            "errors": [r.get("error") for r in results if r.get("status") != "ok"],
        }
    return {
        "finetune_epochs": options.finetune_epochs,
        "seeds": list(options.seeds),
        "scripts": table,
    }


def _mean_ci(values: list[float]) -> dict:
    """Mean and 95 % Student-t interval (the sweep's one t-interval)."""
    import numpy as np

    from ablagen.sweep.stats import t_interval

    interval = t_interval(np.asarray(values, dtype=float))
    return {**interval.to_json(), "n": len(values)}
