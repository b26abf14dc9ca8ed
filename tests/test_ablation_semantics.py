"""The generated scripts' models compute exactly what their ablation says.

Each script is imported as a module; ``ablate(new_model())`` is compared with a
hand-written forward pass of the same weights where the ablated op is skipped,
zeroed, averaged or masked, and everything else is unchanged.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from conftest import EXAMPLES, MODELS
from scriptutil import generate, load_script, new_model


def digits_manual(m, x, skip=(), zero=(), mask=None):
    """DigitsCNN's forward, written out; ``f`` applies the ablation at one point."""

    def f(name, out, inp):
        if name in skip:
            return inp
        if name in zero:
            return torch.zeros_like(out)
        if mask and mask[0] == name:
            out = out.clone()
            out[(slice(None), slice(*mask[1]))] = (
                0  # units are dim 1 for conv and linear here
            )
        return out

    h = f("conv1", m.conv1(x), x)
    h = f("act1", m.act1(h), h)
    h2 = f("conv2", m.conv2(h), h)
    h = f("act2", m.act2(h2), h2)
    h = torch.flatten(m.pool(h), 1)
    h3 = f("fc1", m.fc1(h), h)
    h = f("fn.relu", F.relu(h3), h3)
    return f("fc2", m.fc2(m.drop(h)), h)


@pytest.fixture(scope="module")
def digits_study(tmp_path_factory):
    out = tmp_path_factory.mktemp("sem") / "digits"
    comps = (
        "conv1:zero",
        "act1:identity",
        "fn.relu:identity",
        "fn.relu:zero",
        "fc1:zero",
        "fc1[2:4]:mask",
        "conv2[3]:mask",
        "fc2:mean",
        "act2:mean",
    )
    return generate(
        EXAMPLES / "digits_cnn.py", out, components=comps, dataset="synthetic"
    )


def _models(study, script):
    module = load_script(study / script)
    torch.manual_seed(0)
    reference = new_model(module).eval()
    ablated = module.ablate(copy.deepcopy(reference)).eval()
    return module, reference, ablated


X = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(1))


def test_baseline_model_equals_original(digits_study):
    from ablagen.analyze.loading import load_model

    module, reference, ablated = _models(digits_study, "baseline.py")
    original = load_model(str(EXAMPLES / "digits_cnn.py")).model
    original.load_state_dict(reference.state_dict())
    assert torch.equal(ablated(X), original.eval()(X))


@pytest.mark.parametrize(
    ("script", "manual"),
    [
        ("conv1__zero.py", dict(zero={"conv1"})),
        ("act1__identity.py", dict(skip={"act1"})),
        ("fn_relu__identity.py", dict(skip={"fn.relu"})),
        ("fn_relu__zero.py", dict(zero={"fn.relu"})),
        ("fc1__zero.py", dict(zero={"fc1"})),
        ("fc1_2_4__mask.py", dict(mask=("fc1", (2, 4)))),
        ("conv2_3__mask.py", dict(mask=("conv2", (3, 4)))),
    ],
)
def test_ablation_matches_hand_written_forward(digits_study, script, manual):
    _, reference, ablated = _models(digits_study, script)
    expected = digits_manual(reference, X, **manual)
    assert torch.allclose(ablated(X), expected, atol=1e-6)
    assert not torch.allclose(
        ablated(X), reference(X)
    )  # the ablation changes something
    # everything else unchanged: the same parameters
    ref_params = dict(reference.named_parameters())
    for name, p in ablated.named_parameters():
        assert torch.equal(p, ref_params[name])


def test_zero_means_downstream_input_is_zero(digits_study):
    _, _, ablated = _models(digits_study, "conv1__zero.py")
    seen = {}
    ablated.act1.register_forward_pre_hook(
        lambda m, inputs: seen.setdefault("x", inputs[0])
    )
    ablated(X)
    assert torch.count_nonzero(seen["x"]) == 0


def test_mask_zeroes_exactly_those_units(digits_study):
    _, reference, ablated = _models(digits_study, "conv2_3__mask.py")
    got = {}
    ablated.act2.register_forward_pre_hook(
        lambda m, inputs: got.setdefault("x", inputs[0])
    )
    ablated(X)
    expected = reference.conv2(reference.act1(reference.conv1(X)))
    assert torch.count_nonzero(got["x"][:, 3]) == 0
    keep = [c for c in range(32) if c != 3]
    assert torch.allclose(got["x"][:, keep], expected[:, keep])


def test_mean_is_batch_mean_in_training_and_running_mean_in_eval(digits_study):
    _, reference, ablated = _models(digits_study, "fc2__mean.py")
    ablated.train()
    reference.train()
    torch.manual_seed(3)
    out = ablated(X)
    torch.manual_seed(3)
    raw = reference(X)
    assert torch.allclose(out, raw.mean(dim=0, keepdim=True).expand_as(raw), atol=1e-6)
    ablated.eval()
    constant = ablated(X)
    assert torch.allclose(
        constant, constant[:1].expand_as(constant)
    )  # one vector for all samples
    assert torch.allclose(
        constant[0], raw.mean(dim=0).detach(), atol=1e-6
    )  # the running mean after one batch


def test_call_site_ablation_touches_one_site_only(tmp_path):
    study = generate(
        MODELS / "reused.py",
        tmp_path / "reused",
        components=("relu@1:zero", "relu@0:identity"),
        dataset="synthetic",
    )
    x = torch.randn(4, 5)
    _, ref, ablated = _models(study, "relu_1__zero.py")
    # b sees zeros: a's relu was zeroed (the first relu, on x, still runs: x < 0
    # somewhere, so a model that zeroed both or the first would differ)
    assert (x < 0).any() and (ref.a(ref.relu(x)) != ref.a(x)).any()
    for _ in range(3):  # the per-forward call counter restarts at every forward
        assert torch.allclose(ablated(x), ref.b(torch.zeros(4, 5)))
    _, ref, ablated = _models(study, "relu_0__identity.py")
    expected = ref.b(ref.relu(ref.a(x)))  # the first relu skipped, the second kept
    assert not torch.allclose(expected, ref(x))  # skipping it changes the output
    for _ in range(3):  # a counter that did not restart would skip the wrong site
        assert torch.allclose(ablated(x), expected)


def test_block_identity_and_functional_call_in_residual_net(tmp_path):
    study = generate(
        EXAMPLES / "resnet_small.py",
        tmp_path / "res",
        components=("layer1.0:identity", "fn.relu_1:identity"),
    )
    x = torch.randn(3, 1, 8, 8)

    def forward(m, block0, last_relu):
        h = m.stem(x)
        h = block0(h)
        h = m.layer1[1](h)
        h = m.layer2(torch.relu(m.down(h)))
        return m.fc(F.adaptive_avg_pool2d(h, 1).flatten(1))

    _, ref, ablated = _models(study, "layer1_0__identity.py")
    assert torch.allclose(ablated(x), forward(ref, lambda h: h, None), atol=1e-6)

    _, ref, ablated = _models(study, "fn_relu_1__identity.py")
    b = ref.layer1[0]

    def block0_without_final_relu(h):
        out = F.relu(b.bn1(b.conv1(h)))
        return b.bn2(b.conv2(out)) + h

    assert torch.allclose(
        ablated(x), forward(ref, block0_without_final_relu, None), atol=1e-6
    )


def test_lstm_zero_returns_zero_tuple(tmp_path):
    study = generate(
        MODELS / "lstm.py",
        tmp_path / "lstm",
        components=("lstm:zero",),
        dataset="synthetic",
    )
    _, ref, ablated = _models(study, "lstm__zero.py")
    tokens = torch.arange(10).reshape(2, 5)
    assert torch.allclose(ablated(tokens), ref.head(torch.zeros(2, 8)))


def test_identity_at_a_call_site_of_an_inplace_module(tmp_path):
    """ReLU(inplace=True) overwrites its input: the skipped site must still pass it on."""
    study = generate(
        MODELS / "inplace_reused.py",
        tmp_path / "inplace",
        components=("relu@1:identity",),
        dataset="synthetic",
    )
    _, ref, ablated = _models(study, "relu_1__identity.py")
    x = torch.randn(4, 5)
    expected = ref.b(ref.a(torch.relu(x)))  # the second relu skipped, the first kept
    assert torch.allclose(ablated(x), expected, atol=1e-6)


def test_functional_activations_applied_in_place_are_ablated_where_read(tmp_path):
    """``F.relu(h, inplace=True)`` as a bare statement and ``h.tanh_()``: later code reads
    ``h``, so that is where zero, mean and identity must show."""
    study = generate(
        MODELS / "inplace_functional.py",
        tmp_path / "inplace_fn",
        components=("fn.relu:zero", "fn.relu:identity", "fn.tanh_:zero", "fn.tanh_:mean"),
        dataset="synthetic",
    )  # fmt: skip
    x = torch.randn(4, 5)

    def forward(m, relu, tanh):
        h = m.b(relu(m.a(x)))
        h = tanh(h)
        return m.c(h) + h.sum(dim=1, keepdim=True)

    batch_mean = (
        lambda h: torch.tanh(h).mean(dim=0, keepdim=True).expand_as(h)
    )  # noqa: E731
    cases = {
        "fn_relu__zero.py": (torch.zeros_like, torch.tanh),
        "fn_relu__identity.py": (lambda h: h, torch.tanh),
        "fn_tanh__zero.py": (torch.relu, torch.zeros_like),
        "fn_tanh__mean.py": (torch.relu, batch_mean),
    }
    for script, (relu, tanh) in cases.items():
        _, ref, ablated = _models(study, script)
        ablated.train()  # mean: the batch mean while training
        with torch.no_grad():
            assert torch.allclose(
                ablated(x), forward(ref, relu, tanh), atol=1e-6
            ), script


def _constant_init(module):
    if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
        torch.nn.init.constant_(module.weight, 0.01)
        torch.nn.init.constant_(module.bias, -0.05)


def test_model_apply_on_every_ablated_variant_is_nn_modules(digits_study):
    """``model.apply(fn)`` on every ablated variant is nn.Module's own (no operator
    shadows it): ``fn`` reaches every module once, and re-initialising the ablated
    model gives what ablating the re-initialised model gives."""
    scripts = sorted(p.name for p in digits_study.glob("*.py") if p.stem != "baseline")
    assert len(scripts) == 9  # every method of the fixture: hooks, graph, mask, mean
    for script in scripts:
        module, reference, ablated = _models(digits_study, script)
        seen = []
        assert ablated.apply(seen.append) is ablated, script
        assert sorted(map(id, seen)) == sorted(map(id, ablated.modules())), script
        assert ablated.apply(_constant_init) is ablated
        expected = module.ablate(copy.deepcopy(reference).apply(_constant_init)).eval()
        params = dict(ablated.named_parameters())
        for name, value in expected.named_parameters():
            assert torch.equal(params[name], value), (script, name)
        assert torch.equal(ablated(X), expected(X)), script
