"""Paper Table 3 ablations (GCN, no relation masking, no node flags), the z-scored input of
pretrained backbones, and the Table 3 report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score

from mmfusion.errors import MMFusionError
from mmfusion.model.backbone import ResNet3D
from mmfusion.model.mmfusion import MMFusionModel, ModelConfig
from mmfusion.model.mmrl import RelationAttention
from mmfusion.model.variants import TABLE3, VARIANTS
from mmfusion.report.build import build_report_from_dir
from mmfusion.report.delong import stratified_delong_test
from mmfusion.report.table3 import main as table3_main
from mmfusion.report.thresholds import confusion_counts, metrics_from_counts

WIDTHS = {"clinical": 5, "hematology": 4, "radiomics_tumour": 6, "radiomics_node": 3}
TINY = dict(depth=10, base_width=4, mmrl_dim=8, mmrl_heads=2, hga_dim=8, hga_out=8,
            head_hidden=16, diffusion_hidden=8, n_samples=4, timesteps=5)


def make_batch(b: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    batch = {"tumour": torch.rand(b, 1, 8, 16, 16, generator=gen),
             "node1": torch.rand(b, 1, 8, 12, 12, generator=gen),
             "node2": torch.rand(b, 1, 6, 10, 10, generator=gen),
             "node3": torch.rand(b, 1, 4, 8, 8, generator=gen),
             "node_present": torch.tensor([[1, 1, 1], [1, 0, 0], [0, 0, 0], [1, 1, 1]],
                                          dtype=torch.uint8)[:b],
             "label": torch.tensor([1.0, 0.0, 1.0, 0.0])[:b]}
    for k, w in WIDTHS.items():
        batch[k] = torch.randn(b, w, generator=gen)
    return batch


def make(variant: str, **kw) -> MMFusionModel:
    torch.manual_seed(0)
    return MMFusionModel(ModelConfig(variant=variant, **{**TINY, **kw}), WIDTHS)


def test_table3_variants_are_mmfusion_with_diffusion() -> None:
    assert set(TABLE3) <= set(VARIANTS)
    for variant in TABLE3:
        assert VARIANTS[variant] == VARIANTS["mmfusion"]
        model = make(variant).train()
        batch = make_batch()
        terms = model.loss(batch, model(batch), phase="joint")
        assert "diffusion" in terms and torch.isfinite(terms["total"])
        terms["total"].backward()
        p, u = model.eval().predict(batch, generator=torch.Generator().manual_seed(0))
        assert p.shape == u.shape == (4,) and (u > 0).all()


# ---- GCN ----------------------------------------------------------------------------------

def test_gcn_variant_uses_graphconv_and_differs_from_gat() -> None:
    gat, gcn = make("mmfusion"), make("mmfusion_gcn")

    def kind(module: torch.nn.Module) -> str:  # DGL's GATConv or the torch DenseGATConv
        return type(module).__name__.removeprefix("Dense")

    assert kind(gat.hga.gat) == "GATConv" and not hasattr(gat.hga, "gcn")
    assert kind(gcn.hga.gcn) == "GraphConv" and not hasattr(gcn.hga, "gat")
    assert not any(kind(m) == "GATConv" for m in gcn.modules())
    assert gcn.feature_dim == gat.feature_dim  # same f_phi(x) width: only the layer changes
    batch = make_batch()
    f_gat, f_gcn = gat.eval()(batch).features, gcn.eval()(batch).features
    assert not torch.allclose(f_gat, f_gcn)
    # GraphConv on the complete graph with self-loops: every vertex gets the mean message
    v = len(gcn.hga.vertex_types)
    per_vertex = f_gcn.view(4, v, -1)
    torch.testing.assert_close(per_vertex, per_vertex[:, :1].expand_as(per_vertex))


# ---- no relation masking ------------------------------------------------------------------

def _cross_dropped_share(model: MMFusionModel, monkeypatch: pytest.MonkeyPatch) -> float:
    """Share of the valid relation entries that the cross-tissue attention dropped in one
    training forward (entries of absent-node keys are not valid and do not count)."""
    calls: dict[str, list[torch.Tensor]] = {"cross_t": [], "cross_n": []}
    original = RelationAttention.attend

    def spy(self, rel, v, keep):
        for name in calls:
            if self is getattr(model.mmrl, name):
                k = torch.ones_like(rel, dtype=torch.bool) if keep is None else keep
                calls[name].append(k.expand_as(rel))
        return original(self, rel, v, keep)

    monkeypatch.setattr(RelationAttention, "attend", spy)
    model.train()(make_batch())
    monkeypatch.undo()
    # per cross attention: first x^cu (valid keys), then x^cm (masked) when masking is on
    n_valid = sum(int(c[0].sum()) for c in calls.values())
    n_kept = sum(int(c[-1].sum()) for c in calls.values())
    assert all(1 <= len(c) <= 2 for c in calls.values())
    return 1.0 - n_kept / n_valid


def test_nomask_keeps_every_relation_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _cross_dropped_share(make("mmfusion"), monkeypatch) == pytest.approx(0.15, abs=0.05)
    nomask = make("mmfusion_nomask")
    assert nomask.cfg.mask_ratio == 0.15  # the config keeps the paper's ratio ...
    assert nomask.mmrl.mask_ratio == 0.0  # ... the ablation's MMRL does not use it
    assert _cross_dropped_share(nomask, monkeypatch) == 0.0
    batch = make_batch()
    # in training mode the MMRL output is the inference one, and the alignment terms are 0
    fmaps = nomask.encode_images(batch)
    present = batch["node_present"].bool()
    train_emb = nomask.train().image_embeddings(fmaps, present)
    eval_emb = nomask.eval().image_embeddings(fmaps, present)
    torch.testing.assert_close(train_emb[0], eval_emb[0])
    torch.testing.assert_close(train_emb[1], eval_emb[1])
    assert float(train_emb[2]) == 0.0 and float(train_emb[3]) == 0.0
    masked = make("mmfusion").train().image_embeddings(fmaps, present)
    assert float(masked[2]) > 0.0


# ---- no node flags ------------------------------------------------------------------------

def test_nonodeflags_node_embedding_excludes_the_flags(monkeypatch) -> None:
    flags, noflags = make("mmfusion"), make("mmfusion_nonodeflags")
    assert flags.node_dim == flags.image_dim + 3 and noflags.node_dim == noflags.image_dim
    assert flags.hga.encoders["node_image"][0].in_features == flags.image_dim + 3
    assert noflags.hga.encoders["node_image"][0].in_features == noflags.image_dim
    batch = make_batch()
    fixed = noflags.eval().image_embeddings(noflags.encode_images(batch),
                                            batch["node_present"].bool())

    def same_embeddings(self, fmaps, present):  # images no longer depend on the flags
        return fixed

    monkeypatch.setattr(MMFusionModel, "image_embeddings", same_embeddings)
    other = dict(batch, node_present=torch.ones_like(batch["node_present"]))
    for model, changes in ((noflags, False), (flags, True)):
        a, b = model.eval()(batch).logit, model(other).logit
        assert (not torch.allclose(a, b)) == changes, model.cfg.variant


# ---- z-score for pretrained backbones -----------------------------------------------------

def test_pretrained_backbone_sees_z_scored_patches(tmp_path: Path) -> None:
    torch.manual_seed(1)
    weights = tmp_path / "resnet_10_23dataset.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in
                               ResNet3D(10, 4).state_dict().items()}}, weights)
    seen: list[torch.Tensor] = []
    batch = make_batch()
    scaled = {k: (v * 400 - 160 if k in ("tumour", "node1", "node2", "node3") else v)
              for k, v in batch.items()}  # e.g. HU instead of [0, 1]: an affine change
    for pretrained, invariant in (("", False), (str(weights), True)):
        model = make("base1", pretrained=pretrained).eval()
        hook = model.backbones["tumour"].register_forward_pre_hook(
            lambda m, args: seen.append(args[0]))
        a, b = model.encode_images(batch), model.encode_images(scaled)
        hook.remove()
        same = all(torch.allclose(a[k], b[k], atol=1e-4) for k in a)
        assert same == invariant, pretrained
    x = seen[-1]  # what the pretrained tumour backbone received
    torch.testing.assert_close(x.mean(dim=(1, 2, 3, 4)), torch.zeros(4), atol=1e-5, rtol=0)
    torch.testing.assert_close(x.std(dim=(1, 2, 3, 4), unbiased=False), torch.ones(4),
                               atol=1e-4, rtol=0)


# ---- the Table 3 report -------------------------------------------------------------------

def _fake_run(root: Path, strengths: dict[str, float], seed: int = 3) -> Path:
    """models/{variant}/fold{k}/ with predictions.csv and metrics.json (threshold 0.5) for
    36 patients in 3 test folds; a higher strength separates the classes better."""
    rng = np.random.default_rng(seed)
    ids = [f"P{i:03d}" for i in range(36)]
    labels = np.array([0, 1] * 18)
    noise = rng.normal(size=36)
    for k, (variant, strength) in enumerate(strengths.items()):
        own = np.random.default_rng(1000 + k).normal(size=36)  # never hash(): per process
        prob = 1 / (1 + np.exp(-(strength * (labels - 0.5) + noise + 0.5 * own)))
        for fold in range(3):
            d = root / "models" / variant / f"fold{fold}"
            d.mkdir(parents=True)
            sl = slice(12 * fold, 12 * fold + 12)
            y, p = labels[sl], prob[sl]
            pd.DataFrame({"patient_id": ids[sl], "fold": fold, "variant": variant,
                          "probability": p, "uncertainty": 0.0, "label": y}
                         ).to_csv(d / "predictions.csv", index=False)
            test = {"n": 12, "auc": roc_auc_score(y, p), "brier": float(np.mean((p - y) ** 2)),
                    **metrics_from_counts(confusion_counts(y, p, 0.5))}
            (d / "metrics.json").write_text(json.dumps({"test": test, "threshold": 0.5}))
    return root


STRENGTHS = {"base1": 0.5, "mmfusion": 3.0, "mmfusion_gcn": 2.0, "mmfusion_nomask": 1.0}


def test_table3_csv_rows_columns_and_delong(tmp_path: Path) -> None:
    run = _fake_run(tmp_path / "run", STRENGTHS)
    (run / "config.resolved.yaml").write_text("model: {depth: 50, node_count: true}\n")
    build_report_from_dir(run / "models", run / "report",
                          config_yaml=run / "config.resolved.yaml")
    table = pd.read_csv(run / "report" / "table3.csv")
    assert list(table["variant"]) == ["mmfusion", "mmfusion_gcn", "mmfusion_nomask"]
    assert list(table["cnn"]) == ["ResNet-50"] * 3
    assert list(table["gnn"]) == ["GAT", "GCN", "GAT"]
    assert list(table["mmrl"]) == ["w/ mask", "w/ mask", "w/o mask"]
    for col in ("auc", "accuracy", "precision", "sensitivity", "specificity", "f1",
                "accuracy_at_0.5"):
        assert {f"{col}_mean", f"{col}_sd"} <= set(table.columns), col
    for col in ("n_paired", "auc_difference", "delong_z", "delong_p", "accuracy_difference",
                "sensitivity_difference", "specificity_difference", "f1_difference"):
        assert col in table
        assert pd.isna(table.loc[0, col])  # the reference row has no comparison

    preds = pd.concat(pd.read_csv(p) for p in sorted(run.glob("models/*/fold*/*.csv")))
    metrics = pd.read_csv(run / "report" / "metrics_summary.csv")
    ref = preds[preds["variant"] == "mmfusion"].sort_values("patient_id")
    for _, row in table.iloc[1:].iterrows():
        other = preds[preds["variant"] == row["variant"]].sort_values("patient_id")
        res = stratified_delong_test(other["probability"].to_numpy(),
                                     ref["probability"].to_numpy(), ref["label"].to_numpy(),
                                     ref["fold"].to_numpy())
        assert row["delong_p"] == pytest.approx(res.p_value, rel=1e-5)
        assert row["delong_z"] == pytest.approx(res.z, rel=1e-5)
        assert row["auc_difference"] == pytest.approx(res.difference, rel=1e-5)
        assert row["n_paired"] == 36
        per_fold = metrics.pivot(index="fold", columns="variant", values="accuracy")
        # metrics_summary.csv holds 6 significant digits: each accuracy is off by <= 5e-7
        assert row["accuracy_difference"] == pytest.approx(
            (per_fold[row["variant"]] - per_fold["mmfusion"]).mean(), rel=0, abs=2e-6)
        assert row["auc_mean"] == pytest.approx(
            metrics.loc[metrics["variant"] == row["variant"], "auc"].mean(), rel=1e-5)
    summary = (run / "report" / "summary.md").read_text()
    assert "## Table 3: ablations of MMFusion" in summary
    assert "| mmfusion_gcn | ResNet-50 | GCN |" in summary
    assert "Table 3" in (run / "report" / "front_page.rst").read_text()


def test_no_table3_without_an_ablation(tmp_path: Path) -> None:
    run = _fake_run(tmp_path / "run", {"base1": 0.5, "mmfusion": 3.0})
    build_report_from_dir(run / "models", run / "report")
    assert not (run / "report" / "table3.csv").exists()
    assert "Table 3" not in (run / "report" / "summary.md").read_text()


def test_table3_adds_a_depth_run_from_another_results_folder(tmp_path: Path) -> None:
    main_run = _fake_run(tmp_path / "r50", STRENGTHS)
    depth_run = _fake_run(tmp_path / "r18", {"mmfusion": 1.5})
    for run, depth in ((main_run, 50), (depth_run, 18)):
        (run / "config.resolved.yaml").write_text(f"model: {{depth: {depth}}}\n")
        build_report_from_dir(run / "models", run / "report",
                              config_yaml=run / "config.resolved.yaml")
    out = tmp_path / "table3_depth.csv"
    assert table3_main([str(main_run), "--add", f"resnet18={depth_run}",
                        "--out", str(out)]) == 0
    table = pd.read_csv(out)
    assert list(table["variant"]) == ["mmfusion", "mmfusion_gcn", "mmfusion_nomask",
                                      "resnet18"]
    row = table.iloc[-1]
    assert row["cnn"] == "ResNet-18" and row["gnn"] == "GAT" and row["n_paired"] == 36
    assert row["change"] == "backbone ResNet-18"
    # a run on other patients cannot be paired
    other = _fake_run(tmp_path / "other", {"mmfusion": 1.5})
    moved = other / "models" / "mmfusion" / "fold0" / "predictions.csv"
    pd.read_csv(moved).assign(fold=1).to_csv(moved, index=False)
    build_report_from_dir(other / "models", other / "report")
    with pytest.raises(MMFusionError, match="same patients"):
        table3_main([str(main_run), "--add", f"x={other}", "--out", str(out)])
