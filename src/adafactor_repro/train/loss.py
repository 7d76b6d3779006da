"""Label-smoothed cross entropy (Szegedy et al. 2016; Vaswani et al. 2017, Section 5.4, eps_ls = 0.1).

The smoothed target is q = (1 - eps) * onehot(y) + eps / V (uniform over the whole vocabulary), i.e. the
definition of `torch.nn.functional.cross_entropy(label_smoothing=eps)`:

    loss_i = (1 - eps) * (-log p(y_i)) + (eps / V) * sum_v (-log p(v))

Both functions return *sums* over the non-pad target tokens; the loop divides by the number of target
tokens of the whole update (all micro-batches, all ranks), so the gradient is that of the per-token mean.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def label_smoothed_nll_loss(
    logits: torch.Tensor, target: torch.Tensor, epsilon: float, ignore_index: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(smoothed loss sum, nll sum) over target positions != ignore_index; computed in fp32.

    logits [..., V] (any dtype), target [...] (long). One log-softmax serves both terms.
    """
    if not 0.0 <= epsilon < 1.0:
        raise ValueError(f"label_smoothing={epsilon}: must be in [0, 1)")
    lprobs = F.log_softmax(logits.float(), dim=-1).view(-1, logits.size(-1))
    target = target.reshape(-1)
    mask = target.ne(ignore_index)
    # gather with a valid index everywhere, then zero the pad positions (no boolean indexing: no host sync)
    nll = -lprobs.gather(1, target.clamp(min=0).unsqueeze(1)).squeeze(1)
    nll = nll.masked_fill(~mask, 0.0).sum()
    if epsilon == 0.0:
        return nll, nll.detach()
    smooth = -lprobs.sum(dim=-1)
    smooth = smooth.masked_fill(~mask, 0.0).sum()
    loss = (1.0 - epsilon) * nll + (epsilon / lprobs.size(-1)) * smooth
    return loss, nll.detach()
