"""The scripts stay short enough to read in five minutes (issue: script redesign).

Budgets: a script without gradient noise has at most 400 lines and no noise code,
the mid-run checkpoint code of runs long enough to resume (3+ epochs) included; a
script with noise at most 650, its noise block at most 250. A variant differs from
its baseline only in the docstring and the ablation section.
"""

from __future__ import annotations

import ast
import re

import pytest

from ablagen.generate.context import TrainConfig
from conftest import EXAMPLES, ROOT
from scriptutil import generate

PLAIN_BUDGET, NOISY_BUDGET, NOISE_BLOCK_BUDGET = 400, 650, 250
#: the committed example's baseline.py, the script a newcomer reads first
COMMITTED_BASELINE_BUDGET = 300
#: the mid-run checkpoint section: save, refuse or restore (the lock is a helper below)
CHECKPOINT_SECTION_BUDGET = 25
BANNER = "# %% "


def sections(script: str) -> dict[str, list[str]]:
    """The script's sections by their title (each ``# %% title`` cell marker)."""
    found: dict[str, list[str]] = {"header": []}
    title = "header"
    for line in script.splitlines():
        if line.startswith(BANNER):
            title = re.split(r"[:(]", line.removeprefix(BANNER))[0].strip()
            found[title] = []
        found[title].append(line)
    return found


@pytest.fixture(scope="module", params=["digits_cnn", "resnet_small"])
def plain_study(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(request.param) / "s"
    # the committed study's settings: 8 epochs carry the mid-run checkpoint code
    train = TrainConfig(epochs=8, scheduler="cosine", patience=3)
    return generate(EXAMPLES / f"{request.param}.py", out, train=train)


def test_plain_scripts_fit_the_budget_and_carry_no_noise(plain_study):
    scripts = sorted(plain_study.glob("*.py"))
    assert len(scripts) > 5
    for script in scripts:
        text = script.read_text()
        assert "def load_run_state(" in text, script.name  # 8 epochs: resumable
        assert len(text.splitlines()) <= PLAIN_BUDGET, script.name
        assert "GradientNoise" not in text and "SIGMA" not in text, script.name


def test_variants_differ_from_the_baseline_only_in_docstring_and_ablation(plain_study):
    baseline = sections((plain_study / "baseline.py").read_text())
    assert list(baseline)[:3] == ["header", "config", "model"]
    for script in sorted(plain_study.glob("*.py")):
        variant = sections(script.read_text())
        assert list(variant) == list(baseline), script.name
        for title in baseline:
            if title in ("header", "ablation"):
                continue
            assert variant[title] == baseline[title], (script.name, title)
        end = next(
            i for i, line in enumerate(baseline["header"]) if line.endswith('"""') and i
        )
        assert (
            variant["header"][end:] == baseline["header"][end:]
        ), script.name  # imports


@pytest.mark.parametrize("model", ["digits_cnn", "resnet_small"])
def test_noisy_scripts_fit_the_budget(model, tmp_path):
    train = TrainConfig(
        epochs=2, sigma=0.01, noise="orthogonal", noise_schedule="adaptive"
    )
    study = generate(EXAMPLES / f"{model}.py", tmp_path / "s", train=train)
    for script in sorted(study.glob("*.py")):
        text = script.read_text()
        assert len(text.splitlines()) <= NOISY_BUDGET, script.name
        block = sections(text)["gradient noise"]
        assert len(block) <= NOISE_BLOCK_BUDGET, script.name
        assert "laplace" not in text.lower() and "cosine" not in text.lower()


def constants_never_read(script: str) -> list[str]:
    """Module-level UPPER_CASE names assigned but never read anywhere in the script."""
    tree = ast.parse(script)
    assigned = {
        target.id
        for statement in tree.body
        if isinstance(statement, ast.Assign)
        for target in statement.targets
        if isinstance(target, ast.Name) and target.id.isupper()
    }
    read = {
        node.id
        for node in ast.walk(tree)
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load)
    }
    return sorted(assigned - read)


def test_every_config_value_is_read(plain_study, tmp_path):
    noisy = generate(
        EXAMPLES / "digits_cnn.py",
        tmp_path / "noisy",
        train=TrainConfig(epochs=2, sigma=0.01, noise="dropnoise", scheduler="step"),
    )
    for script in [*plain_study.glob("*.py"), *noisy.glob("*.py")]:
        assert constants_never_read(script.read_text()) == [], script.name


def test_the_committed_baseline_does_not_grow():
    """generated/digits_cnn/baseline.py, the script a newcomer reads first."""
    lines = (ROOT / "generated" / "digits_cnn" / "baseline.py").read_text().splitlines()
    assert len(lines) <= COMMITTED_BASELINE_BUDGET, (
        f"baseline.py has {len(lines)} lines, more than {COMMITTED_BASELINE_BUDGET}: "
        "make the templates shorter, not this budget larger"
    )


def test_the_checkpoint_section_does_not_grow(plain_study):
    """Resume stays one short section: the lock, save_run_state, load_run_state."""
    for script in sorted(plain_study.glob("*.py")):
        section = "\n".join(sections(script.read_text())["mid-run checkpoints"])
        section = section.rstrip().splitlines()  # the blank lines before the next banner
        assert len(section) <= CHECKPOINT_SECTION_BUDGET, (script.name, len(section))
        assert "gc.freeze" not in script.read_text() and "json.loads" not in "".join(
            section
        )
