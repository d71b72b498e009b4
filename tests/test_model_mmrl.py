"""MMRL: masking is real, inference is deterministic, absent nodes are padding."""

from __future__ import annotations

import torch

from mmfusion.model import mmrl as mmrl_module
from mmfusion.model.mmrl import MMRL, masked_softmax


def inputs(b: int = 3, lt: int = 10, per_node: int = 4, c: int = 8, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    tumour = torch.randn(b, lt, c, generator=gen)
    node = torch.randn(b, 3 * per_node, c, generator=gen)
    present = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 0, 0]], dtype=torch.bool)[:b]
    valid = present.repeat_interleave(per_node, dim=1)
    slot = torch.arange(3).repeat_interleave(per_node)
    return tumour, node, valid, slot


def make(mask_ratio: float = 0.15) -> MMRL:
    torch.manual_seed(0)
    return MMRL(8, 8, dim=16, heads=4, mask_ratio=mask_ratio)


def test_masking_changes_training_output():
    model = make(0.15).train()
    args = inputs()
    torch.manual_seed(1)
    masked = model(*args)
    unmasked = make(0.0).train()(*args)
    assert not torch.allclose(masked.tumour, unmasked.tumour)
    assert not torch.allclose(masked.node[:2], unmasked.node[:2])
    assert masked.align_tumour > 0 and masked.align_node > 0
    assert unmasked.align_tumour == 0 and unmasked.align_node == 0
    torch.manual_seed(2)
    assert not torch.allclose(model(*args).tumour, masked.tumour)  # a fresh random mask


def test_eval_is_deterministic_and_unmasked():
    model = make(0.15).eval()
    args = inputs()
    torch.manual_seed(1)
    a = model(*args)
    torch.manual_seed(2)
    b = model(*args)
    assert torch.equal(a.tumour, b.tumour) and torch.equal(a.node, b.node)
    assert a.align_tumour == 0
    ref = make(0.0).eval()(*args)  # inference uses x^cu: identical to a mask-free model
    assert torch.allclose(a.tumour, ref.tumour)


def test_absent_node_contents_do_not_change_output():
    model = make(0.15)
    tumour, node, valid, slot = inputs()
    garbage = node.clone()
    garbage[~valid] = torch.randn(int((~valid).sum()), node.shape[-1]) * 100
    for mode in (True, False):
        model.train(mode)
        torch.manual_seed(3)
        a = model(tumour, node, valid, slot)
        torch.manual_seed(3)
        b = model(tumour, garbage, valid, slot)
        assert torch.allclose(a.tumour, b.tumour, atol=1e-6)
        assert torch.allclose(a.node, b.node, atol=1e-6)
        assert torch.allclose(a.align_node, b.align_node, atol=1e-6)


def test_patient_without_nodes_is_finite_and_shapes():
    out = make().train()(*inputs())
    assert out.tumour.shape == (3, 32) and out.node.shape == (3, 32)
    assert torch.isfinite(out.tumour).all() and torch.isfinite(out.node).all()
    assert torch.equal(out.node[2], torch.zeros(32))  # no node: empty node embedding


def test_gradients_flow_through_alignment():
    model = make().train()
    out = model(*inputs())
    (out.align_tumour + out.align_node + out.tumour.sum()).backward()
    assert model.cross_t.q.weight.grad is not None
    assert torch.isfinite(model.cross_n.kv.weight.grad).all()


def test_masked_softmax_rows():
    scores = torch.randn(2, 4)
    keep = torch.tensor([[True, False, True, True], [False] * 4])
    p = masked_softmax(scores, keep)
    assert torch.allclose(p[0].sum(), torch.tensor(1.0)) and p[0, 1] == 0
    assert torch.equal(p[1], torch.zeros(4))


def test_masked_softmax_equals_reference_with_gradients():
    """Equal (values and gradients) to the plain -inf-fill formulation; None = keep all."""
    torch.manual_seed(0)
    scores = torch.randn(2, 3, 5, 6, requires_grad=True)
    keep = torch.rand(2, 3, 5, 6) > 0.5
    keep[0, 0, 1] = False  # a row with nothing kept
    any_kept = keep.any(-1, keepdim=True)
    ref = torch.softmax(scores.masked_fill(~keep, float("-inf")).masked_fill(~any_kept, 0.0),
                        -1).masked_fill(~keep, 0.0) * any_kept
    w = torch.randn_like(ref)
    (g_ref,) = torch.autograd.grad((ref * w).sum(), scores)
    out = masked_softmax(scores, keep)
    (g_out,) = torch.autograd.grad((out * w).sum(), scores)
    assert torch.allclose(out, ref) and torch.allclose(g_out, g_ref)
    assert torch.equal(out[0, 0, 1], torch.zeros(6))
    full = torch.ones_like(keep)
    assert torch.allclose(masked_softmax(scores, None), masked_softmax(scores, full))


# ---- the maths against definitions ------------------------------------------------------

def record_masked_softmax(monkeypatch) -> list[tuple[torch.Tensor, torch.Tensor | None,
                                                       torch.Tensor]]:
    """Record (scores, keep, weights) of every masked_softmax call MMRL makes."""
    calls = []

    def spy(scores, keep):
        weights = masked_softmax(scores, keep)
        calls.append((scores.detach(), keep, weights.detach()))
        return weights

    monkeypatch.setattr(mmrl_module, "masked_softmax", spy)
    return calls


def test_mask_drops_mask_ratio_of_entries_and_gives_them_zero_weight(monkeypatch):
    """Training: the cross-tissue relation matrices lose `mask_ratio` of their (valid)
    entries (over many draws); dropped entries get exactly zero weight and the kept ones
    a softmax over the kept entries only (removed, not scored 0)."""
    model = make(0.15).train()
    calls = record_masked_softmax(monkeypatch)
    tumour, node, valid, slot = inputs()
    dropped = total = 0
    with torch.no_grad():
        for seed in range(20):
            calls.clear()
            torch.manual_seed(seed)
            model(tumour, node, valid, slot)
            # per forward: intra_t, intra_n, cross_t (x^cu, x^cm), cross_n (x^cu, x^cm)
            assert len(calls) == 6
            for (scores, base, _), (scores_m, keep, w) in ((calls[2], calls[3]),
                                                           (calls[4], calls[5])):
                assert torch.equal(scores, scores_m)  # one relation matrix, masked or not
                eligible = torch.ones_like(keep) if base is None else base.expand_as(keep)
                dropped += int((eligible & ~keep).sum())
                total += int(eligible.sum())
                assert not (keep & ~eligible).any()  # padding keys never come back
                assert torch.equal(w[~keep], torch.zeros(int((~keep).sum())))
                rows = keep.any(-1)
                ref = torch.exp(scores_m - scores_m.amax(-1, keepdim=True)) * keep
                ref = ref / ref.sum(-1, keepdim=True).clamp(min=1e-30)
                torch.testing.assert_close(w[rows], ref[rows])
                torch.testing.assert_close(w.sum(-1), rows.to(w.dtype))
    share = dropped / total  # ~ 40 000 entries: sd of the share ~ 0.002
    assert abs(share - 0.15) < 0.01, share


def test_eval_and_unmasked_attention_equal_scaled_dot_product_attention():
    """Every attention of MMRL in eval mode (and with mask_ratio 0) is
    F.scaled_dot_product_attention on the module's own Q, K, V projections; padding keys
    are excluded through the boolean attention mask (rows with no valid key attend to
    nothing: zero context)."""
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def reference(attn, query, key, key_valid):
        b, lq, d = query.shape
        h = attn.heads
        q = attn.q(query).view(b, lq, h, d // h).transpose(1, 2)
        k, v = attn.kv(key).chunk(2, dim=-1)
        k = k.reshape(b, -1, h, d // h).transpose(1, 2)
        v = v.reshape(b, -1, h, d // h).transpose(1, 2)
        mask = None if key_valid is None else key_valid[:, None, None, :]
        ctx = sdpa(q, k, v, attn_mask=mask).nan_to_num(0.0)  # all-masked rows: NaN -> 0
        return attn.out(ctx.transpose(1, 2).reshape(b, lq, d))

    tumour, node, valid, slot = inputs()
    for ratio, mode in ((0.15, False), (0.0, True)):
        model = make(ratio).train(mode)
        with torch.no_grad():
            out = model(tumour, node, valid, slot)
            t = model.norm_t(model.proj_t(tumour))
            n = model.norm_n(model.proj_n(node) + model.slot(slot)) * valid.unsqueeze(-1)
            t_s = t + reference(model.intra_t, t, t, None)
            n_s = n + reference(model.intra_n, n, n, valid)
            t_c = reference(model.cross_t, t_s, n_s, valid)
            n_c = reference(model.cross_n, n_s, t_s, None)
            w = valid.unsqueeze(-1).float()
            node_emb = torch.cat([(n_s * w).sum(1), (n_c * w).sum(1)], -1) / w.sum(1).clamp(
                min=1)
        torch.testing.assert_close(out.tumour, torch.cat([t_s.mean(1), t_c.mean(1)], -1))
        torch.testing.assert_close(out.node, node_emb)
        assert float(out.align_tumour) == 0 and float(out.align_node) == 0
