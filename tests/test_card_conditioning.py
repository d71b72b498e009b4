"""`model.diffusion_conditioning`: what conditions the diffusion loss (eq. 6) in training.

`card` conditions it on an eval-mode, gradient-free pass of the guide (as CARD trains its
diffusion model on a fixed pre-trained guide): no eq. 6 gradient reaches the extractor, the
conditioning is the guide's eval forward, the modules are back in training mode afterwards
and only the guide's own training pass moves BatchNorm statistics. `train` (the default) is
the behaviour from before the option existed.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from mmfusion.errors import ConfigError
from mmfusion.model.mmfusion import DiffusionCondition, MMFusionModel, ModelConfig
from mmfusion.settings import section_defaults
from mmfusion.train import phases
from mmfusion.train.loop import _setup_run
from mmfusion.train.phases import _diffusion_condition, train_epoch
from tests.test_model_mmfusion import make as make_model
from tests.test_model_mmfusion import make_batch
from tests.test_train_loop import TINY, config, splits

pytestmark = pytest.mark.usefixtures("one_thread")


def make(mode: str, dropout: float = 0.3) -> MMFusionModel:
    return make_model("mmfusion", dropout=dropout, diffusion_conditioning=mode).train()


def guide_parameters(model: MMFusionModel) -> dict[str, torch.nn.Parameter]:
    """Feature extractor (backbones, MMRL, HGA) and guide head: everything but the CFD."""
    return {n: p for n, p in model.named_parameters() if not n.startswith("cfd.")}


def grads(loss: torch.Tensor, params: dict[str, torch.nn.Parameter]) -> dict[str, torch.Tensor]:
    got = torch.autograd.grad(loss, list(params.values()), retain_graph=True,
                              allow_unused=True)
    return {n: torch.zeros_like(p) if g is None else g
            for (n, p), g in zip(params.items(), got, strict=True)}


def bn_buffers(model: MMFusionModel) -> dict[str, torch.Tensor]:
    return {n: b.clone() for n, b in model.named_buffers()
            if "running_" in n or "num_batches" in n}


def test_default_is_train_and_unknown_values_are_refused() -> None:
    assert section_defaults("model")["diffusion_conditioning"] == "train"
    assert ModelConfig().diffusion_conditioning == "train"
    assert ModelConfig.from_config({"diffusion_conditioning": "card"}).diffusion_conditioning \
        == "card"
    with pytest.raises(ConfigError, match="diffusion_conditioning"):
        ModelConfig(diffusion_conditioning="eval")


# ---- (a) where eq. 6's gradient goes ----------------------------------------------------------
def test_card_diffusion_gradient_never_reaches_the_extractor() -> None:
    model, batch = make("card"), make_batch()
    out = model(batch)
    terms = model.loss(batch, out, "joint", model.card_condition(batch))
    guide = guide_parameters(model)
    diffusion = grads(terms["diffusion"], guide)
    assert all((g == 0).all() for g in diffusion.values())
    backbone = [n for n in guide if n.startswith("backbones.")]
    guide_loss = grads(terms["bce"] + terms["align_tumour"] + terms["align_node"], guide)
    assert any(guide_loss[n].abs().sum() > 0 for n in backbone)
    assert any(guide_loss[n].abs().sum() > 0 for n in guide if n.startswith("hga."))
    noise_net = dict(model.cfd.noise_net.named_parameters())
    assert all(g.abs().sum() > 0 for n, g in grads(terms["diffusion"], noise_net).items()
               if n.startswith("lin4"))


def test_train_diffusion_gradient_reaches_the_extractor_not_the_guide_head() -> None:
    model, batch = make("train"), make_batch()
    terms = model.loss(batch, model(batch), "joint")
    diffusion = grads(terms["diffusion"], guide_parameters(model))
    for part in ("backbones.", "mmrl.", "hga."):
        assert any(g.abs().sum() > 0 for n, g in diffusion.items() if n.startswith(part)), part
    assert all((g == 0).all() for n, g in diffusion.items() if n.startswith("head."))


# ---- (b) the conditioning is the guide's eval forward -----------------------------------------
@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_card_condition_is_the_eval_forward_without_gradient(dropout: float) -> None:
    model, batch = make("card", dropout), make_batch()
    first, second = model.card_condition(batch), model.card_condition(batch)
    assert not first.features.requires_grad and not first.y_hat.requires_grad
    assert torch.equal(first.features, second.features)  # no dropout, no masking
    model.eval()
    with torch.no_grad():
        out = model(batch)
    torch.testing.assert_close(first.features, out.features, rtol=0, atol=0)
    torch.testing.assert_close(first.y_hat, model.guide_probabilities(out.logit), rtol=0, atol=0)
    # the training pass is random (MMRL masking, dropout) and differs from it
    model.train()
    assert not torch.equal(model(batch).features, model(batch).features)
    assert not torch.equal(model(batch).features, first.features)


# ---- (c) train mode restored, BatchNorm statistics untouched ---------------------------------
def test_guide_eval_restores_each_module_mode_even_on_error() -> None:
    model = make("card")
    model.backbones.eval()  # a frozen backbone stays in eval mode
    modes = {n: m.training for n, m in model.named_modules()}
    with model.guide_eval():
        assert not model.hga.training and not model.mmrl.training and not model.head.training
        assert model.cfd.training and model.cfd.noise_net.norm.training  # CFD keeps training
    assert {n: m.training for n, m in model.named_modules()} == modes
    with pytest.raises(RuntimeError, match="boom"), model.guide_eval():
        raise RuntimeError("boom")
    assert {n: m.training for n, m in model.named_modules()} == modes


def test_card_condition_leaves_batchnorm_statistics_and_modes_alone() -> None:
    model, batch = make("card"), make_batch()
    before = bn_buffers(model)
    model.card_condition(batch)
    assert all(m.training for m in model.modules())
    after = bn_buffers(model)
    assert all(torch.equal(before[n], after[n]) for n in before)
    model(batch)  # the training pass does move them
    moved = bn_buffers(model)
    assert any(not torch.equal(before[n], moved[n]) for n in before if n.startswith("backbones."))


def run_epochs(tmp: Path, mode: str, epochs: tuple[int, ...] = (1, 2), **train_kw
               ) -> phases.RunState:
    """Joint-phase epochs of `train_epoch` on the tiny cohort (dropout and masking on)."""
    cfg = ModelConfig(variant="mmfusion", **{**TINY, "dropout": 0.3},
                      diffusion_conditioning=mode)
    data = splits()
    run = _setup_run(cfg, config(epochs=4, warmup_epochs=1, **train_kw), data, tmp, 0, None,
                     torch.device("cpu"))
    for epoch in epochs:
        train_epoch(run, data["train"], epoch)
    return run


def guide_state(model: MMFusionModel) -> dict[str, torch.Tensor]:
    """Weights and buffers (BatchNorm statistics included) of everything but the CFD."""
    return {n: v for n, v in model.state_dict().items() if not n.startswith("cfd.")}


def test_card_training_moves_the_guide_exactly_as_without_the_diffusion_pass(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Whole joint-phase epochs (extra noise-network updates on): with `card`, the guide's
    weights and BatchNorm statistics end exactly where they end when the eval-mode guide
    pass is skipped (conditioning replaced by constants), so neither eq. 6's gradient nor
    that pass touches them; the modules end in training mode."""
    card = run_epochs(tmp_path / "card", "card", diffusion_updates=2, diffusion_lr=1e-3)
    assert all(m.training for m in card.model.modules())

    def no_guide_pass(self: MMFusionModel, batch) -> DiffusionCondition:  # noqa: ANN001
        b = batch["label"].shape[0]
        return DiffusionCondition(torch.zeros(b, self.feature_dim), torch.full((b, 2), 0.5))

    with monkeypatch.context() as patch:
        patch.setattr(MMFusionModel, "card_condition", no_guide_pass)
        skipped = run_epochs(tmp_path / "skipped", "card", diffusion_updates=2,
                             diffusion_lr=1e-3)
    got, want = guide_state(card.model), guide_state(skipped.model)
    assert all(torch.equal(got[n], want[n]) for n in want)
    assert any("running_mean" in n for n in want)
    # the diffusion head did see different conditioning
    assert not torch.equal(card.model.cfd.noise_net.lin4.weight,
                           skipped.model.cfd.noise_net.lin4.weight)
    # with `train`, eq. 6 trains the extractor too: the guide ends elsewhere
    train = run_epochs(tmp_path / "train", "train", diffusion_updates=2, diffusion_lr=1e-3)
    other = guide_state(train.model)
    assert any(not torch.equal(other[n], want[n]) for n in want if n.startswith("backbones."))


# ---- (d) the default is the behaviour from before the option --------------------------------
def test_train_mode_conditions_on_the_training_pass_and_never_runs_a_guide_pass(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kw):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("card_condition called with diffusion_conditioning: train")

    monkeypatch.setattr(MMFusionModel, "card_condition", refuse)
    run = run_epochs(tmp_path / "train", "train", diffusion_updates=1)
    assert all(m.training for m in run.model.modules())
    # the loss's own default conditioning is the training pass's: same draws, same value
    model, batch = make("train"), make_batch()
    out = model(batch)
    torch.manual_seed(3)
    implicit = model.loss(batch, out, "joint")["diffusion"]
    torch.manual_seed(3)
    cond = model.train_condition(out)
    assert cond.features is out.features and not cond.y_hat.requires_grad
    assert torch.equal(implicit, model.loss(batch, out, "joint", cond)["diffusion"])


def test_no_guide_pass_outside_the_joint_phase(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    original = MMFusionModel.card_condition
    monkeypatch.setattr(MMFusionModel, "card_condition",
                        lambda self, batch: calls.append(1) or original(self, batch))
    run = run_epochs(tmp_path / "warm", "card", epochs=(0,))  # warm-up epoch
    assert not calls
    batch = next(splits()["train"].batches(4, torch.device("cpu")))
    assert _diffusion_condition(run, batch, run.model(batch), "warmup") is None
    assert _diffusion_condition(run, batch, run.model(batch), "joint") is not None
    assert calls == [1]
    base3 = dataclasses.replace(run, model_cfg=dataclasses.replace(run.model_cfg,
                                                                   variant="base3"))
    assert _diffusion_condition(base3, batch, run.model(batch), "joint") is None
