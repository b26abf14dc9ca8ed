"""One typed study state: options that round-trip through the manifest, CLI
defaults stated once (the dataclasses' field defaults)."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import pytest
import typer

from ablagen.cli import app
from ablagen.generate.command import regenerate_command
from ablagen.generate.context import TrainConfig
from ablagen.generate.request import GenerateOptions, StudyConfig
from ablagen.orchestrate import RunOptions, parse_seeds
from ablagen.study import STUDY_TRAIN, ArmOptions, RankOptions, StudyOptions
from ablagen.core.studydir import load_manifest
from conftest import MODELS


def _defaults(command: str) -> dict[str, object]:
    group = typer.main.get_command(app)
    return {p.name: p.default for p in group.commands[command].params}


def test_generate_cli_defaults_are_the_dataclass_defaults() -> None:
    cli = _defaults("generate")
    train = TrainConfig()
    for f in fields(TrainConfig):
        assert cli[f.name] == getattr(train, f.name), f.name
    options = GenerateOptions(model="", out=Path())
    for f in fields(GenerateOptions):
        if f.name not in ("model", "out", "train", "components"):
            assert cli[f.name] == getattr(options, f.name), f.name
    assert cli["out"] is None and not cli["components"]  # generated/<stem>; none


def test_study_cli_defaults_are_the_dataclass_defaults() -> None:
    cli = _defaults("study")
    for name in ("epochs", "lr", "optimizer", "scheduler", "patience"):
        assert cli[name] == getattr(STUDY_TRAIN, name), name
    study = StudyOptions(generate=GenerateOptions(model="", out=Path()))
    assert parse_seeds(cli["seeds"]) == study.seeds
    assert parse_seeds(cli["arm_seeds"]) == study.arm_seeds
    assert (cli["retrain_top"], cli["arms"]) == (study.retrain_top, study.with_arms)
    assert cli["metric"] == RankOptions().metric
    assert (cli["jobs"], cli["backend"]) == (RunOptions().jobs, RunOptions().backend)
    for name in ("mode", "kinds", "methods", "neuron_groups", "dataset"):
        assert cli[name] == getattr(study.generate, name), name
    for command in ("study", "hybrid"):
        cli = _defaults(command)
        for f in fields(ArmOptions):
            assert cli[f.name] == getattr(ArmOptions(), f.name), (command, f.name)


def test_rank_cli_defaults_are_the_dataclass_defaults() -> None:
    cli = _defaults("rank")
    rank = RankOptions()
    assert cli["no_plots"] is (not rank.plots)
    for f in fields(RankOptions):
        if f.name != "plots":
            assert cli[f.name] == getattr(rank, f.name), f.name


def test_regenerate_command_spells_only_what_differs_from_the_defaults() -> None:
    opts = GenerateOptions(model="m.py:Net", out=Path("."))
    assert regenerate_command(opts, "m.py") == "ablagen generate m.py:Net --out ."
    opts = GenerateOptions(
        model="m.py",
        out=Path("."),
        mode="knockout",
        train=TrainConfig(epochs=8, stop_at_target=True),
    )
    assert regenerate_command(opts, "m.py") == (
        "ablagen generate m.py --out . --mode knockout --epochs 8 --stop-at-target"
    )


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    from ablagen.generate.build import generate_study

    out = tmp_path_factory.mktemp("state") / "mlp"
    opts = GenerateOptions(
        model=str(MODELS / "mlp.py"),
        out=out,
        kinds="layers,neurons",
        methods="zero,mask",
        neuron_groups=2,
        dataset="synthetic",
        val_fraction=0.25,
        train=TrainConfig(epochs=1, scheduler="step", patience=2, lr=0.01),
    )
    return generate_study(opts)


def test_manifest_config_reads_back_equal(generated) -> None:
    manifest = load_manifest(generated.out)
    config = StudyConfig.from_manifest(manifest.config)
    assert config == generated.config
    assert config.train == TrainConfig(epochs=1, scheduler="step", patience=2, lr=0.01)
    assert config.data.val_fraction == 0.25 and config.kinds == ("layer", "neuron")
    # and writes itself again byte for byte
    assert json.dumps(config.to_manifest(), sort_keys=True) == json.dumps(
        manifest.config, sort_keys=True
    )


def test_recorded_options_prepare_the_same_study(generated) -> None:
    """What a later command (ablagen hybrid) rebuilds from the manifest is the study."""
    from ablagen.generate.prepare import prepare

    config = generated.config
    opts = config.options(generated.out, str(MODELS / "mlp.py"))
    again = prepare(opts, command=config.command)  # the command as recorded
    assert again.config == config
    assert again.model == generated.prepared.model


def test_train_config_and_data_spec_round_trip() -> None:
    from ablagen.generate.context import DataSpec

    train = TrainConfig(epochs=3, patience=None, stop_at_target=True, sigma=0.1)
    assert (
        TrainConfig.from_manifest(json.loads(json.dumps(train.to_manifest()))) == train
    )
    data = DataSpec("synthetic", 0.3, 7, token_range=11)
    assert DataSpec.from_manifest(json.loads(json.dumps(data.to_manifest()))) == data
