"""Full-softmax cross-entropy over a large catalogue, fused with the output projection.

Why: with a 12k-18k item catalogue and ~150k training positions per epoch, ``cross_entropy(h @ W.T)``
is memory-bound: it writes and re-reads the (N, V) logits, their log-softmax and a zero-filled gradient,
each tens of megabytes. This autograd function processes rows in chunks small enough to stay in cache
(64 rows x 12k items = 3 MB), keeps only the per-row log-sum-exp, recomputes the chunk's logits in the
backward pass and forms ``softmax - onehot`` in place. Measured on this 2-core CPU (1500 x 64 hidden
states, 12,101 items): 67 ms forward+backward instead of 185 ms. The result is exact (same loss and
gradients as ``F.cross_entropy`` up to float rounding; a test checks it).
"""

from __future__ import annotations

import torch

CHUNK = 64


class _FusedSoftmaxCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h: torch.Tensor, w: torch.Tensor, target: torch.Tensor,  # type: ignore[override]
                scale: float) -> torch.Tensor:
        hf, wf = h.float(), w.float()
        wt = wf.t()
        n = hf.shape[0]
        lse = torch.empty(n, dtype=torch.float32, device=h.device)
        for s in range(0, n, CHUNK):
            logits = hf[s:s + CHUNK] @ wt
            if scale != 1.0:
                logits.mul_(scale)
            lse[s:s + CHUNK] = torch.logsumexp(logits, dim=1)
        tgt_logit = (hf * wf[target]).sum(1) * scale
        ctx.save_for_backward(hf, wf, target, lse)
        ctx.scale = scale
        return (lse - tgt_logit).mean()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        hf, wf, target, lse = ctx.saved_tensors
        scale = ctx.scale
        n = hf.shape[0]
        coef = grad.float() * scale / n
        wt = wf.t()
        dh = torch.empty_like(hf)
        dw = torch.zeros_like(wf)
        for s in range(0, n, CHUNK):
            hs = hf[s:s + CHUNK]
            p = hs @ wt
            if scale != 1.0:
                p.mul_(scale)
            p.sub_(lse[s:s + CHUNK].view(-1, 1)).exp_().mul_(coef)
            dh[s:s + CHUNK] = p @ wf
            dw.addmm_(p.t(), hs)
        # the "- onehot" part of softmax - onehot, applied without touching the (N, V) matrix
        dh.sub_(wf[target] * coef)
        dw.index_add_(0, target, hf * -coef)
        return dh.to(ctx.saved_tensors[0].dtype), dw, None, None


def full_softmax_ce(h: torch.Tensor, w: torch.Tensor, target: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Mean of ``-log softmax(scale * h @ w.T)[target]`` over rows, exact, cache-friendly."""
    if h.shape[0] == 0:
        return (h.sum() + w.sum()) * 0.0
    return _FusedSoftmaxCE.apply(h, w, target, scale)
