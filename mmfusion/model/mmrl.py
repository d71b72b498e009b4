"""Multi-tissue Masked Relational Learning, MMRL (paper §2.2, Fig. 2, loss terms of eq. 5).

Tokens are real sequences: the tumour tokens are the spatial positions of the tumour
feature map, the node tokens the positions of the (up to 3) node feature maps, and tokens
of absent nodes are padding (never attended to, never pooled). Per tissue:

1. intra-tissue multi-head self-attention -> x^S;
2. cross-tissue attention (queries from this tissue's x^S, keys/values from the other
   tissue's x^S). Its relation (score) matrix R_cross is used as is (-> x^cu) and, in
   training, with a random `mask_ratio` of its entries removed before the softmax
   (R_cross^M -> x^cm), as in masked relation modelling (paper ref. [32]);
3. x^cm (training) or x^cu (inference) is merged with x^S (concatenated, as the reference
   does) and pooled over the tissue's valid tokens;
4. the alignment loss MSE(x^cu, x^cm) over valid tokens is returned (eq. 5, L^T, L^N).

Unlike the public reference (a single token, where the softmax is always 1 and masking is
a no-op), masking here changes the output. `mask_ratio=0` is MMRL without relation masking
(paper Table 3 "w/o mask", variant `mmfusion_nomask`): no relation entry is ever dropped,
x^cm = x^cu in training too, and both alignment losses are 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


def masked_softmax(scores: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    """Softmax over the last dim restricted to `keep`; rows with nothing kept give zeros.

    Args:
        scores: `(..., Lq, Lk)` relation matrix.
        keep: bool, broadcastable to `scores`; False entries get zero weight. None: keep
            everything (a plain softmax).
    """
    if keep is None:
        return torch.softmax(scores, dim=-1)
    drop = ~keep
    any_kept = keep.any(dim=-1, keepdim=True)
    # rows with something kept: exp(-inf) is exactly 0 at the dropped entries; rows with
    # nothing kept get finite scores (so no NaN) and are zeroed by `any_kept`
    scores = scores.masked_fill(drop & any_kept, float("-inf"))
    return torch.softmax(scores, dim=-1) * any_kept


class RelationAttention(nn.Module):
    """Multi-head attention that exposes its relation matrix for masking.

    Forward: queries `(B, Lq, d)`, keys `(B, Lk, d)`, key validity `(B, Lk)` bool,
    optional relation keep-mask `(B, heads, Lq, Lk)` -> `(B, Lq, d)`.
    """

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        return x.view(b, n, self.heads, d // self.heads).transpose(1, 2)  # (B, h, L, dh)

    def relation(self, query: torch.Tensor, key: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """Relation matrix R = Q K^T / sqrt(d_h) `(B, h, Lq, Lk)` and values `(B, h, Lk, dh)`."""
        q = self._split(self.q(query))
        k, v = self.kv(key).chunk(2, dim=-1)
        k, v = self._split(k), self._split(v)
        return q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), v

    def attend(self, rel: torch.Tensor, v: torch.Tensor, keep: torch.Tensor | None
               ) -> torch.Tensor:
        """softmax(R) V with entries outside `keep` (None: none) removed -> `(B, Lq, d)`."""
        out = masked_softmax(rel, keep) @ v
        b, h, n, dh = out.shape
        return self.out(out.transpose(1, 2).reshape(b, n, h * dh))

    def forward(self, query: torch.Tensor, key: torch.Tensor, key_valid: torch.Tensor | None
                ) -> torch.Tensor:
        """`key_valid` None: every key is valid (no masking work at all)."""
        rel, v = self.relation(query, key)
        return self.attend(rel, v, None if key_valid is None else key_valid[:, None, None, :])


@dataclass
class MMRLOutput:
    """Pooled tissue embeddings `(B, 2d)` each, and the two alignment losses (scalars)."""

    tumour: torch.Tensor
    node: torch.Tensor
    align_tumour: torch.Tensor
    align_node: torch.Tensor


def masked_mean(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean of `(B, L, d)` over valid tokens `(B, L)`; zeros where none is valid."""
    w = valid.to(x.dtype).unsqueeze(-1)
    return (x * w).sum(1) / w.sum(1).clamp(min=1.0)


def _masked_mse(a: torch.Tensor, b: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    w = valid.to(a.dtype).unsqueeze(-1)
    return ((a - b).square() * w).sum() / (w.sum() * a.shape[-1]).clamp(min=1.0)


class MMRL(nn.Module):
    """Intra-tissue self-attention + masked cross-tissue relational attention.

    Args:
        tumour_channels: channels of the tumour tokens (backbone `out_channels`).
        node_channels: channels of the node tokens.
        dim: attention width d.
        heads: attention heads.
        mask_ratio: fraction of relation-matrix entries removed in training (paper 0.15).
        max_nodes: node slots (3); each gets a learned slot embedding.

    Forward:
        tumour `(B, Lt, Ct)`, node `(B, Ln, Cn)`, node_valid `(B, Ln)` bool,
        node_slot `(Ln,)` long (which node each token belongs to) -> `MMRLOutput`.
    """

    def __init__(self, tumour_channels: int, node_channels: int, dim: int = 64, heads: int = 4,
                 mask_ratio: float = 0.15, max_nodes: int = 3) -> None:
        super().__init__()
        if not 0.0 <= mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
        self.mask_ratio = mask_ratio
        self.proj_t = nn.Linear(tumour_channels, dim)
        self.proj_n = nn.Linear(node_channels, dim)
        self.slot = nn.Embedding(max_nodes, dim)
        self.norm_t = nn.LayerNorm(dim)
        self.norm_n = nn.LayerNorm(dim)
        self.intra_t = RelationAttention(dim, heads)
        self.intra_n = RelationAttention(dim, heads)
        self.cross_t = RelationAttention(dim, heads)  # tumour queries, node keys
        self.cross_n = RelationAttention(dim, heads)  # node queries, tumour keys
        self.out_dim = 2 * dim

    def _cross(self, attn: RelationAttention, query: torch.Tensor, key: torch.Tensor,
               key_valid: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Unmasked x^cu and (training) masked x^cm cross-tissue representations.

        `key_valid` None: every key is valid."""
        rel, v = attn.relation(query, key)  # R_cross (B, h, Lq, Lk)
        keep = None if key_valid is None else key_valid[:, None, None, :]
        x_cu = attn.attend(rel, v, keep)
        if not self.training or self.mask_ratio == 0.0:
            return x_cu, x_cu
        random_keep = torch.rand(rel.shape, device=rel.device) >= self.mask_ratio
        if keep is not None:
            random_keep = random_keep & keep
        x_cm = attn.attend(rel, v, random_keep)  # R_cross^M
        return x_cu, x_cm

    def forward(self, tumour: torch.Tensor, node: torch.Tensor, node_valid: torch.Tensor,
                node_slot: torch.Tensor) -> MMRLOutput:
        tumour_valid = torch.ones(tumour.shape[:2], dtype=torch.bool, device=tumour.device)
        t = self.norm_t(self.proj_t(tumour))
        n = self.norm_n(self.proj_n(node) + self.slot(node_slot))
        # zero padding tokens so nothing of an absent node's content leaks anywhere
        n = n * node_valid.unsqueeze(-1).to(n.dtype)
        # intra-tissue MSA -> x^S
        t_s = t + self.intra_t(t, t, None)  # every tumour token is valid
        n_s = n + self.intra_n(n, n, node_valid)
        # cross-tissue MSA on the (masked) relation matrix -> x^cu, x^cm
        t_cu, t_cm = self._cross(self.cross_t, t_s, n_s, node_valid)
        n_cu, n_cm = self._cross(self.cross_n, n_s, t_s, None)
        t_c = t_cm if self.training else t_cu
        n_c = n_cm if self.training else n_cu
        tumour_emb = torch.cat([t_s.mean(1), t_c.mean(1)], dim=-1)
        node_emb = torch.cat([masked_mean(n_s, node_valid), masked_mean(n_c, node_valid)], -1)
        return MMRLOutput(
            tumour=tumour_emb,
            node=node_emb,
            align_tumour=_masked_mse(t_cu, t_cm, tumour_valid),  # L^T_MSE, eq. 5
            align_node=_masked_mse(n_cu, n_cm, node_valid),  # L^N_MSE, eq. 5
        )
