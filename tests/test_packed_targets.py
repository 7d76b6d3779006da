"""collate's packed target positions: the index path gives the mask path's logits, loss and gradients bit for
bit (the cpu scale's numerics do not move), without the boolean-mask indexing that syncs the host."""

from __future__ import annotations

import numpy as np
import torch

from adafactor_repro.data import collate
from adafactor_repro.model import Transformer, TransformerConfig
from adafactor_repro.train.loss import label_smoothed_nll_loss


def _samples(n=6, seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.integers(4, 50, rng.integers(1, 9)), rng.integers(4, 50, rng.integers(1, 12))) for _ in range(n)]


def test_collate_ships_the_non_pad_target_positions_in_row_major_order():
    b = collate([(np.array([5, 6]), np.array([8, 9])), (np.array([10]), np.array([11, 12, 13]))])
    # target rows [8 9 3 0] and [11 12 13 3]: flat positions 0-2 and 4-7
    assert b["target_index"].tolist() == [0, 1, 2, 4, 5, 6, 7]
    assert b["target_tokens"].tolist() == [8, 9, 3, 11, 12, 13, 3]
    assert b["target_index"].dtype == b["target_tokens"].dtype == torch.long
    big = collate(_samples(20, seed=3))
    mask = big["target"].ne(0)
    assert torch.equal(big["target_tokens"], big["target"][mask])
    assert torch.equal(big["target_index"], mask.view(-1).nonzero().squeeze(1))
    assert len(big["target_index"]) == big["ntokens"]


def _loss_and_grads(model, b, use_index: bool):
    torch.manual_seed(5)  # same dropout masks on both paths
    model.zero_grad(set_to_none=True)
    if use_index:
        logits = model(b["src_tokens"], b["prev_output_tokens"], output_index=b["target_index"])
        target = b["target_tokens"]
    else:
        mask = b["target"].ne(0)
        logits = model(b["src_tokens"], b["prev_output_tokens"], output_mask=mask)
        target = b["target"][mask]
    loss, nll = label_smoothed_nll_loss(logits, target, 0.1, 0)
    loss.backward()
    return logits.detach(), loss.detach(), {k: p.grad.clone() for k, p in model.named_parameters()}


def test_index_path_is_bit_identical_to_the_mask_path():
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(vocab_size=50, d_model=32, n_heads=4, ffn_dim=64, encoder_layers=2,
                                          decoder_layers=2))
    model.train()  # dropout on: the seeded masks must line up too
    b = collate(_samples(7, seed=1))
    la, lossa, ga = _loss_and_grads(model, b, use_index=False)
    lb, lossb, gb = _loss_and_grads(model, b, use_index=True)
    assert torch.equal(la, lb) and torch.equal(lossa, lossb)
    assert ga.keys() == gb.keys() and all(torch.equal(ga[k], gb[k]) for k in ga)
    assert any(g.abs().sum() > 0 for g in gb.values())
