"""The MMFusion model and its ablations (paper Fig. 1, Tables 2 and 3), switched by config.

| variant  | MMRL | HGA | CFD | fusion / prediction                                    |
|----------|------|-----|-----|--------------------------------------------------------|
| base1    |  -   |  -  |  -  | pooled ResNet embeddings + tables, concatenated -> MLP |
| base2    |  ✓   |  -  |  -  | MMRL tissue embeddings + tables -> MLP                 |
| base3    |  ✓   |  ✓  |  -  | HGA modality graph -> MLP guide head                   |
| mmfusion |  ✓   |  ✓  |  ✓  | HGA -> guide head ŷ + CARD diffusion over the label    |

Table 3 ablations (`mmfusion.model.variants.TABLE3`) are mmfusion with one change, read from
`ModelConfig.graph_conv` / `relation_mask` / `node_flags`: `mmfusion_gcn` (GraphConv in
HGA), `mmfusion_nomask` (MMRL without relation masking: x^cm = x^cu, alignment loss 0),
`mmfusion_nonodeflags` (no node-present flags in the node embedding).

With `pretrained` weights every patch is standardised per patch (zero mean, unit sd over
its voxels) where it enters the backbone: MedicalNet was trained on z-scored volumes,
while the crop stage's default `minmax` puts patches in [0, 1]. An already z-scored patch
(`crop.normalisation: zscore`) passes unchanged (to float precision). Without pretrained
weights the patches enter as the crop stage wrote them.

A batch is a dict of tensors: `tumour` `(B, 1, D, H, W)`, `node1..node3` `(B, 1, d_k, h_k, w_k)`,
`node_present` `(B, 3)`, one `(B, width)` float array per tabular group, `label` `(B,)`.
In frozen-backbone mode the images may be replaced by cached feature maps
`tumour_fmap`, `node1_fmap`, ... (`(B, C, d, h, w)`). Widths come from `tabular_widths`
(the in-fold preprocessed arrays), never from hard-coded column counts.

Loss (eq. 7) = BCE(guide) + MSE_align(T) + MSE_align(N) (eq. 5) + diffusion noise MSE (eq. 6);
the diffusion term is added only in the `joint` phase (after the guide warm-up).

What conditions eq. 6 in training, and where its gradient goes (`model.diffusion_conditioning`):

- `train` (default): the features and ŷ of the training forward pass (dropout, MMRL
  relation masking, BatchNorm batch statistics on). Eq. 6's gradient reaches the noise
  network and, through the features, HGA, MMRL and the backbone(s); not the guide head
  (ŷ is detached).
- `card`: those of a second forward pass of the guide in eval mode (`card_condition`: no
  dropout, no masking, BatchNorm running statistics, which that pass does not update),
  without gradient, as CARD conditions its diffusion model on a pre-trained f_phi. Eq. 6's
  gradient reaches the noise network only.

In both, the guide's terms (BCE, alignment) come from the training forward pass and train
backbone, MMRL, HGA and guide head as before; the extra noise-network updates
(`train.diffusion_updates`) reuse the same conditioning, detached.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from mmfusion.model.backbone import ResNet3D, load_medicalnet
from mmfusion.model.cfd import CFD
from mmfusion.model.graph_backend import GRAPH_BACKENDS, resolve_graph_backend
from mmfusion.model.hga import HGA
from mmfusion.model.mmrl import MMRL, masked_mean
from mmfusion.model.variants import ABLATION_OVERRIDES, VARIANTS
from mmfusion.settings import check_choice, schema_defaults

NODE_KEYS = ("node1", "node2", "node3")
TABULAR_GROUPS = ("clinical", "hematology", "radiomics_tumour", "radiomics_node")
STANDARDISE_EPS = 1e-6
DIFFUSION_CONDITIONING = ("train", "card")


def standardise(patches: torch.Tensor) -> torch.Tensor:
    """Each patch `(N, C, D, H, W)` to zero mean and unit sd over its voxels (MedicalNet's
    input convention); a constant patch becomes all zeros."""
    dims = tuple(range(1, patches.ndim))
    mean = patches.mean(dim=dims, keepdim=True)
    sd = patches.std(dim=dims, keepdim=True, unbiased=False)
    return (patches - mean) / sd.clamp(min=STANDARDISE_EPS)


@dataclass(frozen=True)
@schema_defaults("model", unread=("variants",))
class ModelConfig:
    """Model hyper-parameters (config section `model`, less `variants`: the workflow runs one
    variant per job). Defaults come from the config schema and follow the paper
    (supplement Table 2: ResNet-50, masking ratio 15 %, T = 10, betas 0.01 to 0.95)."""

    variant: str = "mmfusion"
    depth: int  # 3D ResNet depth 10 | 18 | 34 | 50
    base_width: int  # 64 = MedicalNet; smaller only for CPU demos
    shared_backbone: bool  # False: one backbone per patch kind (reference)
    pretrained: str  # local MedicalNet resnet_{depth}_23dataset.pth, "" = random init
    mmrl_dim: int
    mmrl_heads: int
    mask_ratio: float
    hga_dim: int
    hga_out: int
    gat_heads: int
    head_hidden: int
    dropout: float
    timesteps: int
    beta_start: float
    beta_end: float
    diffusion_hidden: int
    n_samples: int  # reverse-process samples per patient at inference
    probability: str  # diffusion sample -> probability: card | difference
    diffusion_target: str  # network predicts noise (CARD, eq. 6) | y0
    # what conditions eq. 6 in training: train (the training pass's features, eq. 6 gradient
    # into the extractor) | card (eval-mode guide pass, no gradient); module docstring
    diffusion_conditioning: str
    node_count: bool  # append the 3 node-present flags (node count) to the node image
    # train on cached maps of a fixed (pretrained) backbone (mmfusion/train/features.py)
    freeze_backbone: bool
    # auto | dgl | torch: what runs HGA's graph layer (mmfusion/model/graph_backend.py)
    graph_backend: str

    def __post_init__(self) -> None:
        check_choice("model variant", self.variant, list(VARIANTS))
        check_choice("model.graph_backend", self.graph_backend, GRAPH_BACKENDS)
        check_choice("model.diffusion_conditioning", self.diffusion_conditioning,
                     DIFFUSION_CONDITIONING)

    @property
    def switches(self) -> tuple[bool, bool, bool]:
        return VARIANTS[self.variant]

    # ---- the one component a Table 3 ablation changes (variants.ABLATION_OVERRIDES) --------
    def _override(self, name: str, default: object) -> object:
        return ABLATION_OVERRIDES.get(self.variant, {}).get(name, default)

    @property
    def graph_conv(self) -> str:
        """HGA layer: `gat` (paper eq. 1) or `gcn` (`mmfusion_gcn`)."""
        return str(self._override("graph_conv", "gat"))

    @property
    def relation_mask(self) -> bool:
        """Random relation-matrix masking in MMRL's training (off: `mmfusion_nomask`)."""
        return bool(self._override("relation_mask", True))

    @property
    def node_flags(self) -> bool:
        """Node-present flags in the node embedding: `node_count`, off for
        `mmfusion_nonodeflags`."""
        return bool(self._override("node_flags", self.node_count))


@dataclass
class ModelOutput:
    """logit `(B,)` of the guide/MLP head, fused features `(B, F)`, loss terms (scalars)."""

    logit: torch.Tensor
    features: torch.Tensor
    align_tumour: torch.Tensor
    align_node: torch.Tensor
    extras: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class DiffusionCondition:
    """What the noise network of eq. 6 is conditioned on: features `(B, F)` and the guide's
    class probabilities ŷ `(B, 2)`."""

    features: torch.Tensor
    y_hat: torch.Tensor

    def detach(self) -> DiffusionCondition:
        return DiffusionCondition(self.features.detach(), self.y_hat.detach())


class MMFusionModel(nn.Module):
    """All four variants of the paper's Table 2.

    Args:
        cfg: model hyper-parameters, `cfg.variant` picks the components.
        tabular_widths: group -> width of the preprocessed tabular arrays (groups of
            width 0 are left out).
        device: where the model will run; decides `model.graph_backend: auto`
            (`mmfusion.model.graph_backend`; default: the CPU). `graph_backend` then says
            which backend HGA uses and `graph_backend_reason` why (None without HGA).
    """

    def __init__(self, cfg: ModelConfig, tabular_widths: Mapping[str, int],
                 device: torch.device | str | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.graph_backend: str | None = None
        self.graph_backend_reason = "no graph (variant without HGA)"
        self.use_mmrl, self.use_hga, self.use_cfd = cfg.switches
        self.tabular_widths = {k: int(v) for k, v in tabular_widths.items() if int(v) > 0}
        kinds = ("shared",) if cfg.shared_backbone else ("tumour", *NODE_KEYS)
        self.backbones = nn.ModuleDict({
            kind: ResNet3D(cfg.depth, cfg.base_width) for kind in kinds
        })
        if cfg.pretrained:
            for backbone in self.backbones.values():
                load_medicalnet(backbone, cfg.pretrained)
        channels = next(iter(self.backbones.values())).out_channels
        self.image_dim = channels
        if self.use_mmrl:
            mask_ratio = cfg.mask_ratio if cfg.relation_mask else 0.0
            self.mmrl = MMRL(channels, channels, cfg.mmrl_dim, cfg.mmrl_heads, mask_ratio,
                             max_nodes=len(NODE_KEYS))
            self.image_dim = self.mmrl.out_dim
        # the node-image embedding carries which node slots are contoured (the node count,
        # up to 3): pooling or attention over present nodes alone cannot see how many there are
        self.node_dim = self.image_dim + (len(NODE_KEYS) if cfg.node_flags else 0)
        if self.use_hga:
            widths = {"tumour_image": self.image_dim, "node_image": self.node_dim,
                      **self.tabular_widths}
            device_type = torch.device(device).type if device is not None else "cpu"
            self.graph_backend, self.graph_backend_reason = resolve_graph_backend(
                cfg.graph_backend, device_type)
            self.hga = HGA(widths, cfg.hga_dim, cfg.hga_out, cfg.gat_heads, cfg.dropout,
                           conv=cfg.graph_conv, backend=self.graph_backend)
            self.feature_dim = self.hga.out_dim
        else:
            self.feature_dim = (self.image_dim + self.node_dim
                                + sum(self.tabular_widths.values()))
        self.head = nn.Sequential(
            nn.Linear(self.feature_dim, cfg.head_hidden), nn.SELU(), nn.Dropout(cfg.dropout),
            nn.Linear(cfg.head_hidden, cfg.head_hidden // 4), nn.SELU(),
            nn.Dropout(cfg.dropout), nn.Linear(cfg.head_hidden // 4, 1),
        )
        if self.use_cfd:
            self.cfd = CFD(self.feature_dim, cfg.timesteps, cfg.beta_start, cfg.beta_end,
                           cfg.diffusion_hidden, mapping=cfg.probability,
                           target=cfg.diffusion_target)

    # ---- images -------------------------------------------------------------------------
    def backbone_for(self, kind: str) -> ResNet3D:
        return self.backbones["shared" if self.cfg.shared_backbone else kind]  # type: ignore

    def backbone_input(self, patches: torch.Tensor) -> torch.Tensor:
        """Patches `(N, 1, D, H, W)` as the backbone takes them: standardised per patch
        with pretrained (MedicalNet) weights, else unchanged."""
        if not self.cfg.pretrained or not patches.shape[0]:
            return patches
        return standardise(patches)

    def encode_images(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Backbone feature maps: `{kind}_fmap` `(B, C, d, h, w)` for tumour and node1..3.

        Absent nodes are not run through the backbone (their maps are zeros), so their
        content and count never change another patient's result or the BN statistics.
        Node slots with the same backbone and patch size (node2 and node3 at the usual
        sizes, shared backbone) go through one backbone call when that backbone is in eval
        mode, where a patch's result does not depend on the rest of its batch. In training
        mode each slot keeps its own call, so BatchNorm's batch statistics stay per slot.
        """
        tumour = self.backbone_input(batch["tumour"])
        out = {"tumour_fmap": self.backbone_for("tumour")(tumour)[0]}
        present = batch["node_present"].bool()
        groups: list[list[int]] = []  # node slots that share one backbone call
        for k, key in enumerate(NODE_KEYS):
            backbone = self.backbone_for(key)
            for group in groups:
                first = NODE_KEYS[group[0]]
                if (not backbone.training and backbone is self.backbone_for(first)
                        and batch[key].shape[1:] == batch[first].shape[1:]):
                    group.append(k)
                    break
            else:
                groups.append([k])
        for group in groups:
            backbone = self.backbone_for(NODE_KEYS[group[0]])
            rows = [present[:, k].nonzero(as_tuple=True)[0] for k in group]
            patches = torch.cat([batch[NODE_KEYS[k]][r] for k, r in zip(group, rows, strict=True)])
            maps = backbone(self.backbone_input(patches))[0] if patches.shape[0] else None
            offset = 0
            for k, r in zip(group, rows, strict=True):
                key = NODE_KEYS[k]
                size = ResNet3D.feature_size(tuple(batch[key].shape[2:]))
                fmap = batch[key].new_zeros((batch[key].shape[0], backbone.out_channels, *size))
                if r.numel():
                    assert maps is not None
                    fmap = fmap.index_copy(0, r, maps[offset : offset + r.numel()])
                    offset += r.numel()
                out[f"{key}_fmap"] = fmap
        return out

    def image_embeddings(self, fmaps: Mapping[str, torch.Tensor], present: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Tumour and node embeddings `(B, image_dim)` and the MMRL alignment losses."""
        tumour = fmaps["tumour_fmap"]
        zero = tumour.new_zeros(())
        if not self.use_mmrl:  # Base1: pooled embeddings, nodes averaged over present ones
            node_pooled = torch.stack([fmaps[f"{k}_fmap"].mean(dim=(2, 3, 4))
                                       for k in NODE_KEYS], dim=1)
            return tumour.mean(dim=(2, 3, 4)), masked_mean(node_pooled, present), zero, zero
        # tokens: feature-map positions (B, L, C); node tokens of all slots concatenated
        t_tokens = tumour.flatten(2).transpose(1, 2)
        n_tokens, n_valid, n_slot = [], [], []
        for k, key in enumerate(NODE_KEYS):
            tok = fmaps[f"{key}_fmap"].flatten(2).transpose(1, 2)
            n_tokens.append(tok)
            n_valid.append(present[:, k : k + 1].expand(-1, tok.shape[1]))
            n_slot.append(torch.full((tok.shape[1],), k, dtype=torch.long, device=tok.device))
        out = self.mmrl(t_tokens, torch.cat(n_tokens, 1), torch.cat(n_valid, 1),
                        torch.cat(n_slot))
        return out.tumour, out.node, out.align_tumour, out.align_node

    # ---- fusion -------------------------------------------------------------------------
    def node_input(self, n_emb: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """The node-image embedding as fusion takes it: with the 3 node-present flags (the
        node count) appended, unless `node_flags` is off."""
        if not self.cfg.node_flags:
            return n_emb
        return torch.cat([n_emb, present.to(n_emb.dtype)], dim=-1)

    def forward(self, batch: Mapping[str, torch.Tensor]) -> ModelOutput:
        """Guide logit, fused features f_phi(x) and alignment terms for a batch."""
        fmaps = batch if "tumour_fmap" in batch else self.encode_images(batch)
        present = batch["node_present"].bool()
        t_emb, n_emb, align_t, align_n = self.image_embeddings(fmaps, present)
        n_emb = self.node_input(n_emb, present)
        tables = {g: batch[g] for g in self.tabular_widths}
        if self.use_hga:
            features = self.hga({"tumour_image": t_emb, "node_image": n_emb, **tables})
        else:
            features = torch.cat([t_emb, n_emb, *tables.values()], dim=-1)
        logit = self.head(features).squeeze(-1)
        return ModelOutput(logit, features, align_t, align_n)

    # ---- what conditions the diffusion loss ----------------------------------------------
    @contextmanager
    def guide_eval(self) -> Iterator[None]:
        """Every module of the guide f_phi (all but the diffusion head `cfd`) in eval mode
        within the block: no dropout, no MMRL relation masking, BatchNorm on (and not
        updating) its running statistics. Each module's own mode is restored afterwards."""
        guide = [m for name, m in self.named_modules()
                 if name != "cfd" and not name.startswith("cfd.")]
        modes = [m.training for m in guide]
        try:
            for m in guide:
                m.training = False
            yield
        finally:
            for m, mode in zip(guide, modes, strict=True):
                m.training = mode

    @torch.no_grad()
    def card_condition(self, batch: Mapping[str, torch.Tensor]) -> DiffusionCondition:
        """CARD's conditioning of eq. 6: features and ŷ of the guide in eval mode
        (`guide_eval`), computed without gradient; deterministic, and it leaves every
        BatchNorm statistic as it was."""
        with self.guide_eval():
            out = self.forward(batch)
        return DiffusionCondition(out.features, self.guide_probabilities(out.logit))

    def train_condition(self, out: ModelOutput) -> DiffusionCondition:
        """The `train` conditioning: the training pass's features (with their gradient,
        into HGA, MMRL and the backbone) and its detached ŷ."""
        return DiffusionCondition(out.features, self.guide_probabilities(out.logit.detach()))

    @staticmethod
    def guide_probabilities(logit: torch.Tensor) -> torch.Tensor:
        """ŷ `(B, 2)`: the guide's class probabilities [1 - σ(z), σ(z)]."""
        p = torch.sigmoid(logit)
        return torch.stack([1.0 - p, p], dim=-1)

    def loss(self, batch: Mapping[str, torch.Tensor], out: ModelOutput, phase: str = "joint",
             condition: DiffusionCondition | None = None) -> dict[str, torch.Tensor]:
        """Eq. 7 terms and their sum (`total`). `phase`: `warmup` (no diffusion) or `joint`.

        `condition`: what conditions eq. 6 (`card_condition` for `diffusion_conditioning:
        card`); None = `train_condition(out)`. The guide's terms always come from `out`."""
        label = batch["label"].float()
        terms = {
            "bce": F.binary_cross_entropy_with_logits(out.logit, label),  # eq. 5
            "align_tumour": out.align_tumour,  # eq. 5, L^T_MSE
            "align_node": out.align_node,  # eq. 5, L^N_MSE
        }
        if self.use_cfd and phase == "joint":
            y0 = F.one_hot(label.long(), 2).float()
            cond = condition if condition is not None else self.train_condition(out)
            terms["diffusion"] = self.cfd.loss(y0, cond.features, cond.y_hat)  # eq. 6
        terms["total"] = sum(terms.values())  # eq. 7
        return terms

    @torch.no_grad()
    def predict(self, batch: Mapping[str, torch.Tensor], n_samples: int | None = None,
                generator: torch.Generator | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Probability of metastasis `(B,)` and uncertainty `(B,)` (0 without diffusion)."""
        out = self.forward(batch)
        if not self.use_cfd:
            p = torch.sigmoid(out.logit)
            return p, torch.zeros_like(p)
        pred = self.cfd.predict(out.features, self.guide_probabilities(out.logit),
                                n_samples or self.cfg.n_samples, generator)
        return pred.probability, pred.uncertainty

    @torch.no_grad()
    def diffusion_samples(self, batch: Mapping[str, torch.Tensor], n_samples: int | None = None,
                          generator: torch.Generator | None = None) -> torch.Tensor:
        """Reverse-process y0 samples `(B, S, 2)` (diffusion variants only)."""
        out = self.forward(batch)
        samples = self.cfd.sample(out.features, self.guide_probabilities(out.logit),
                                  n_samples or self.cfg.n_samples, generator)
        assert isinstance(samples, torch.Tensor)
        return samples
