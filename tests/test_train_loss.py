"""Label-smoothed cross entropy against a hand computation (Vaswani et al. 2017, Section 5.4)."""

import math

import pytest
import torch
import torch.nn.functional as F

from adafactor_repro.train.loss import label_smoothed_nll_loss


def test_label_smoothing_matches_hand_computation():
    # V = 3, two real tokens and one pad (id 0). Hand: q = (1-eps)*onehot + eps/V; loss = -sum_v q_v log p_v.
    logits = torch.tensor([[[1.0, 2.0, 0.5], [0.0, 0.0, 3.0], [5.0, -1.0, 2.0]]])
    target = torch.tensor([[1, 2, 0]])
    eps, V = 0.1, 3
    expected_loss, expected_nll = 0.0, 0.0
    for row, y in ((logits[0, 0].tolist(), 1), (logits[0, 1].tolist(), 2)):
        z = math.log(sum(math.exp(x) for x in row))
        logp = [x - z for x in row]
        q = [eps / V + (1 - eps if v == y else 0.0) for v in range(V)]
        expected_loss += -sum(qv * lp for qv, lp in zip(q, logp))
        expected_nll += -logp[y]
    loss, nll = label_smoothed_nll_loss(logits, target, eps, ignore_index=0)
    assert loss.item() == pytest.approx(expected_loss, rel=1e-6)
    assert nll.item() == pytest.approx(expected_nll, rel=1e-6)
    # the pad position contributes nothing, whatever its logits
    logits2 = logits.clone()
    logits2[0, 2] = torch.tensor([100.0, -100.0, 0.0])
    assert label_smoothed_nll_loss(logits2, target, eps)[0].item() == pytest.approx(expected_loss, rel=1e-6)


def test_matches_torch_cross_entropy_and_grad():
    torch.manual_seed(0)
    logits = torch.randn(4, 7, 50, requires_grad=True)
    target = torch.randint(0, 50, (4, 7))
    target[:, -2:] = 0  # padding
    loss, nll = label_smoothed_nll_loss(logits, target, 0.1, ignore_index=0)
    ref = F.cross_entropy(logits.view(-1, 50), target.view(-1), ignore_index=0, label_smoothing=0.1, reduction="sum")
    ref_nll = F.cross_entropy(logits.view(-1, 50), target.view(-1), ignore_index=0, reduction="sum")
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(nll, ref_nll)
    g, = torch.autograd.grad(loss, logits)
    g_ref, = torch.autograd.grad(ref, logits)
    torch.testing.assert_close(g, g_ref)
    assert not nll.requires_grad


def test_bf16_logits_are_scored_in_fp32():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 30)
    target = torch.randint(1, 30, (2, 5))
    a, _ = label_smoothed_nll_loss(logits.bfloat16(), target, 0.1)
    b, _ = label_smoothed_nll_loss(logits.bfloat16().float(), target, 0.1)
    assert a.dtype == torch.float32
    torch.testing.assert_close(a, b)


def test_bad_epsilon_is_rejected():
    with pytest.raises(ValueError, match="label_smoothing"):
        label_smoothed_nll_loss(torch.zeros(1, 1, 3), torch.ones(1, 1, dtype=torch.long), 1.0)
