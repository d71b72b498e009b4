"""Model variants: shapes, loss terms per variant, absent nodes, frozen-backbone maps."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from mmfusion.errors import ConfigError
from mmfusion.model.backbone import ResNet3D
from mmfusion.model.mmfusion import NODE_KEYS, VARIANTS, MMFusionModel, ModelConfig

WIDTHS = {"clinical": 5, "hematology": 4, "radiomics_tumour": 6, "radiomics_node": 3}
TINY = dict(depth=10, base_width=4, mmrl_dim=8, mmrl_heads=2, hga_dim=8, hga_out=8,
            head_hidden=16, diffusion_hidden=8, n_samples=4, timesteps=5)


def make_batch(b: int = 3, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    batch = {
        "tumour": torch.randn(b, 1, 8, 16, 16, generator=gen),
        "node1": torch.randn(b, 1, 8, 12, 12, generator=gen),
        "node2": torch.randn(b, 1, 6, 10, 10, generator=gen),
        "node3": torch.randn(b, 1, 4, 8, 8, generator=gen),
        "node_present": torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 0]], dtype=torch.uint8)[:b],
        "label": torch.tensor([1.0, 0.0, 1.0])[:b],
    }
    for k, w in WIDTHS.items():
        batch[k] = torch.randn(b, w, generator=gen)
    return batch


def make(variant: str, **kw) -> MMFusionModel:
    torch.manual_seed(0)
    return MMFusionModel(ModelConfig(variant=variant, **{**TINY, **kw}), WIDTHS)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_variant_forward_loss_predict(variant):
    model = make(variant).train()
    batch = make_batch()
    out = model(batch)
    assert out.logit.shape == (3,) and out.features.shape == (3, model.feature_dim)
    terms = model.loss(batch, out, phase="joint")
    assert ("diffusion" in terms) == VARIANTS[variant][2]
    # alignment (eq. 5) compares masked with unmasked relations: none without MMRL or mask
    assert (terms["align_tumour"] > 0) == (variant not in ("base1", "mmfusion_nomask"))
    terms["total"].backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert "diffusion" not in model.loss(batch, model(batch), phase="warmup")
    model.eval()
    p, u = model.predict(batch, generator=torch.Generator().manual_seed(0))
    assert p.shape == u.shape == (3,)
    if VARIANTS[variant][2]:  # mean and sd of CARD's mapping over the reverse samples
        samples = model.diffusion_samples(batch, generator=torch.Generator().manual_seed(0))
        per_sample = torch.softmax(-(samples - 1).square(), dim=-1)[..., 1]
        torch.testing.assert_close(p, per_sample.mean(1))
        torch.testing.assert_close(u, per_sample.std(1, unbiased=False))
        assert (u > 0).all()
    else:  # the MLP head's sigmoid, no uncertainty
        with torch.no_grad():
            torch.testing.assert_close(p, torch.sigmoid(model(batch).logit))
        assert (u == 0).all()


@pytest.mark.parametrize("variant", ["base1", "mmfusion"])
def test_absent_node_patches_are_ignored(variant):
    model = make(variant).train()
    batch = make_batch()
    noisy = dict(batch)
    present = batch["node_present"].bool()
    for k, key in enumerate(("node1", "node2", "node3")):
        noisy[key] = batch[key].clone()
        noisy[key][~present[:, k]] = 50.0
    torch.manual_seed(1)
    a = model(batch)
    torch.manual_seed(1)
    b = model(noisy)
    assert torch.allclose(a.logit, b.logit, atol=1e-5)


def test_frozen_backbone_feature_maps_give_same_output():
    model = make("base3").eval()
    batch = make_batch()
    with torch.no_grad():
        fmaps = model.encode_images(batch)
        cached = {k: v for k, v in batch.items() if k not in ("tumour", "node1", "node2",
                                                               "node3")}
        assert torch.allclose(model(batch).logit, model({**cached, **fmaps}).logit)


def test_shared_backbone_and_widths_from_spec():
    model = make("base3", shared_backbone=True)
    assert list(model.backbones) == ["shared"]
    no_hema = MMFusionModel(ModelConfig(variant="base1", **TINY),
                            {**WIDTHS, "hematology": 0})
    assert no_hema.feature_dim == no_hema.image_dim + no_hema.node_dim + 5 + 6 + 3


def test_config_rejects_unknown_keys_and_variants():
    with pytest.raises(ConfigError, match=r"unknown model setting.*'lr'"):
        ModelConfig.from_config({"variant": "base1", "lr": 1})
    with pytest.raises(ConfigError, match="model variant must be one of.*got 'base4'"):
        ModelConfig(variant="base4")
    cfg = ModelConfig.from_config({"variant": "base2", "depth": 18})
    assert dataclasses.asdict(cfg)["depth"] == 18


@pytest.mark.parametrize("train", [False, True])
def test_node_slots_of_equal_size_share_a_backbone_call_only_in_eval(train):
    """Eval: node2+node3 in one call equal separate calls. Train: separate calls (per-slot
    BatchNorm statistics), as before."""
    model = make("base3", shared_backbone=True).train(train)
    batch = make_batch()
    batch["node3"] = torch.randn(3, 1, 6, 10, 10)  # same size as node2
    batch["node_present"] = torch.tensor([[1, 1, 1], [1, 0, 1], [1, 1, 0]], dtype=torch.uint8)
    backbone = model.backbones["shared"]
    calls = []
    handle = backbone.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    with torch.no_grad():
        fmaps = model.encode_images(batch)
    handle.remove()
    assert calls == ([3, 3, 2, 2] if train else [3, 3, 4])
    present = batch["node_present"].bool()
    for k, key in enumerate(("node1", "node2", "node3")):
        rows = present[:, k]
        with torch.no_grad():
            alone = backbone(batch[key][rows])[0]
        assert torch.allclose(fmaps[f"{key}_fmap"][rows], alone, atol=1e-5)
        assert (fmaps[f"{key}_fmap"][~rows] == 0).all()


def test_eq7_loss_value_recomputed_from_the_model_outputs(monkeypatch):
    """Eq. 7 = BCE(guide) + L^T_MSE + L^N_MSE (eq. 5) + eq. 6, each recomputed here from
    what the model produced: the guide logit, the unmasked and masked cross-tissue
    representations (alignment over valid tokens only) and the noise network's input and
    output (its ε recovered from y_t by inverting eq. 2 with y0 = one-hot(label))."""
    model = make("mmfusion").train()
    batch = make_batch()
    cross = []  # (x^cu, x^cm) of the tumour branch, then of the node branch
    original = model.mmrl._cross

    def spy_cross(*args):
        x_cu, x_cm = original(*args)
        cross.append((x_cu.detach().double(), x_cm.detach().double()))
        return x_cu, x_cm

    monkeypatch.setattr(model.mmrl, "_cross", spy_cross)
    net_calls = []
    model.cfd.noise_net.register_forward_hook(
        lambda m, args, out: net_calls.append((*[a.detach() for a in args], out.detach())))
    torch.manual_seed(4)
    out = model(batch)
    terms = model.loss(batch, out, phase="joint")
    assert len(cross) == 2 and len(net_calls) == 1

    label = batch["label"].double()
    z = out.logit.detach().double()
    bce = -(label * torch.sigmoid(z).log() + (1 - label) * torch.sigmoid(-z).log()).mean()
    (t_cu, t_cm), (n_cu, n_cm) = cross
    align_t = (t_cu - t_cm).square().mean()  # every tumour token is valid
    tokens = [ResNet3D.feature_size(tuple(batch[k].shape[2:])) for k in NODE_KEYS]
    valid = torch.cat([batch["node_present"][:, k : k + 1].bool().expand(-1, int(
        torch.tensor(size).prod())) for k, size in enumerate(tokens)], 1)
    assert valid.shape == n_cu.shape[:2]
    align_n = (n_cu - n_cm).square()[valid].mean()
    y_t, feats, y_hat, t, pred = net_calls[0]
    torch.testing.assert_close(feats, out.features.detach())
    p = torch.sigmoid(out.logit.detach())
    torch.testing.assert_close(y_hat, torch.stack([1 - p, p], -1))  # ŷ = [1 - σ, σ]
    ab = torch.cumprod(1 - torch.linspace(model.cfg.beta_start, model.cfg.beta_end,
                                          model.cfg.timesteps, dtype=torch.float64), 0)[t]
    y0 = torch.nn.functional.one_hot(batch["label"].long(), 2).double()
    s = ab.sqrt().unsqueeze(-1)
    eps = (y_t.double() - s * y0 - (1 - s) * y_hat.double()) / (1 - ab).sqrt().unsqueeze(-1)
    diffusion = (pred.double() - eps).square().mean()

    expected = {"bce": bce, "align_tumour": align_t, "align_node": align_n,
                "diffusion": diffusion}
    assert set(terms) == {*expected, "total"}
    for name, value in expected.items():
        assert float(terms[name]) == pytest.approx(float(value), rel=1e-4, abs=1e-7), name
    assert float(align_t) > 0 and float(align_n) > 0  # masking really happened
    assert float(terms["total"]) == pytest.approx(float(sum(expected.values())), rel=1e-5)
    warm = model.loss(batch, out, phase="warmup")
    assert "diffusion" not in warm
    assert float(warm["total"]) == pytest.approx(float(bce + align_t + align_n), rel=1e-5)
