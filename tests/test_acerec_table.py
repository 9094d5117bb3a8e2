"""ACERec's code-token table path (normalise and project E + P once per step, gather per item) is exact."""

import torch

from sidrec.methods.acerec.model import ACERec, ACERecConfig, ffn_width


def _model(merge: str = "atm") -> ACERec:
    torch.manual_seed(0)
    codes = torch.randint(0, 16, (40, 8))
    cfg = ACERecConfig(d_model=32, n_latents=4, n_layers=1, n_heads=2, ffn_dim=0, dropout=0.0, merge=merge)
    return ACERec(codes, 16, 6, cfg, torch.rand(40) * 10)


def test_table_path_gives_identical_loss_and_gradients():
    model = _model()
    seq = torch.tensor([[-1, 3, 5, 7, 9, 11], [0, 1, 2, 3, 4, 5]])
    target = torch.tensor([[-1, 5, 7, 9, 11, 13], [1, 2, 3, 4, 5, 6]])
    loss = model(seq, target)
    loss.backward()
    g_fast = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()

    def per_item(codes: torch.Tensor):  # the per-item x code reference path (what the model did before)
        x = model.code_tokens(codes)
        s = model.summarise(x.mean(1))
        return x, s, model.merger(x, s)

    model.items = per_item  # type: ignore[method-assign]
    ref = model(seq, target)
    ref.backward()
    assert torch.allclose(loss, ref, atol=1e-6), (loss, ref)
    for n, p in model.named_parameters():
        if p.grad is not None:
            assert torch.allclose(g_fast[n], p.grad, atol=1e-5), n


def test_ffn_width_follows_the_paper_ratio():
    assert ffn_width(448) == 1024
    assert _model().cfg.ffn_dim == ffn_width(32)
