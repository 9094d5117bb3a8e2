"""RQ-VAE tokenizer and its residual quantiser (estimators, dead-code restarts, determinism, save / load)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sidrec.errors import SidrecError
from sidrec.sid.base import build_tokenizer, load_tokenizer
from sidrec.sid.config import TokenizerConfig
from sidrec.sid.rqvae import ResidualQuantizer, RQVAETokenizer


def clustered(n: int = 300, d: int = 16, k: int = 12, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((k, d)) * 3
    return (centres[rng.integers(0, k, n)] + rng.standard_normal((n, d))).astype(np.float32)


TINY = dict(kind="rqvae", levels=2, codebook_sizes=[8], hidden_dims=[32, 16], latent_dim=8, epochs=20,
            batch_size=64, progress=False)


def fit(**opts) -> RQVAETokenizer:
    tok = build_tokenizer(TokenizerConfig(**{**TINY, **opts}))
    assert isinstance(tok, RQVAETokenizer)
    return tok.fit(clustered())


@pytest.mark.parametrize("estimator", ["ste", "gumbel", "soft"])
def test_same_seed_same_codes_and_encode_reproduces_fit(estimator):
    x = clustered()
    a, b = fit(seed=3, estimator=estimator), fit(seed=3, estimator=estimator)
    codes = a.encode(x)
    assert codes.shape == (len(x), 2) and codes.dtype == np.int64
    assert codes.min() >= 0 and codes.max() < 8
    assert np.array_equal(codes, b.encode(x))
    for (ka, va), (kb, vb) in zip(a.model.state_dict().items(), b.model.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)
    # encoding in pieces (a cold item on its own) gives the catalogue's codes
    assert np.array_equal(np.concatenate([a.encode(x[:1]), a.encode(x[1:7]), a.encode(x[7:])]), codes)
    # codes are the eval-mode nearest codes of the fitted model
    m = a.model
    with torch.no_grad():
        z = m.encoder((torch.from_numpy(x) - a._mean) / a._scale)
        assert np.array_equal(m.quantizer(z).codes.numpy(), codes)
    assert a.decode(codes).shape == x.shape


def test_different_seed_may_differ_and_global_rng_untouched():
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = fit(seed=1)
    assert torch.equal(torch.get_rng_state(), before)
    b = fit(seed=2)
    diff = [not torch.equal(va, vb) for va, vb in zip(a.model.state_dict().values(), b.model.state_dict().values(),
                                                      strict=True)]
    assert any(diff)


def test_training_learns_something_and_uses_the_codebook():
    x = clustered()
    tok = fit(seed=0, epochs=100)
    codes = tok.encode(x)
    err = ((tok.decode(codes) - x) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
    assert err < 0.4  # 12 clusters, 8 x 8 codes: ~0.2 after 100 epochs; predicting the mean (or 1 epoch) is ~1.0
    assert len(np.unique(codes[:, 0])) >= 6
    assert tok.history["steps"] == 100 * 5 and np.isfinite(tok.history["final_recon_mse"])


def test_save_load_round_trip(tmp_path):
    x = clustered()
    tok = fit(seed=5, estimator="gumbel")
    codes = tok.encode(x)
    tok.save(tmp_path / "tok")
    for back in (load_tokenizer(tmp_path / "tok"), RQVAETokenizer.load(tmp_path / "tok")):
        assert type(back) is RQVAETokenizer
        assert back.codebook_sizes == [8, 8] and back.dim == 16
        assert np.array_equal(back.encode(x), codes)
        assert np.array_equal(back.decode(codes), tok.decode(codes))
        assert back.history == tok.history


def test_loading_another_kind_is_an_error(tmp_path):
    rq = build_tokenizer(TokenizerConfig(kind="rqkmeans", levels=2, codebook_sizes=[8], kmeans_iters=5))
    rq.fit(clustered())
    rq.save(tmp_path / "rq")
    with pytest.raises(SidrecError, match="of kind 'rqkmeans'"):
        RQVAETokenizer.load(tmp_path / "rq")


def test_bad_input_is_a_clear_error():
    x = clustered()
    tok = build_tokenizer(TokenizerConfig(**TINY))
    with pytest.raises(SidrecError, match="not fitted"):
        tok.encode(x)
    bad = x.copy()
    bad[4, 1] = np.nan
    with pytest.raises(SidrecError, match="NaN or inf.*row 4"):
        tok.fit(bad)
    tok.fit(x)
    with pytest.raises(SidrecError, match="NaN or inf"):
        tok.encode(bad)
    with pytest.raises(SidrecError, match="dimension 16"):
        tok.encode(x[:, :10])
    with pytest.raises(SidrecError, match="outside"):
        tok.decode(np.array([[0, 8]]))


@pytest.mark.parametrize("opts, match", [
    (dict(estimator="argmax"), "estimator"),
    (dict(tau=0.0), "tau"),
    (dict(tau=-1.0), "tau"),
    (dict(latent_dim=0), "latent_dim"),
    (dict(epochs=0), "epochs"),
    (dict(batch_size=0), "batch_size"),
    (dict(codebook_sizes=[8, 8, 8]), "codebook_sizes"),
    (dict(device="nonsense"), "device"),
])
def test_unsupported_options_are_rejected(opts, match):
    with pytest.raises(SidrecError, match=match):
        build_tokenizer(TokenizerConfig(**{**TINY, **opts}))


def _quantizer(seed: int = 0) -> tuple[ResidualQuantizer, torch.Tensor]:
    torch.manual_seed(seed)
    rq = ResidualQuantizer([8, 8], dim=4, beta=0.25)
    z = torch.randn(64, 4)
    with torch.no_grad():
        rq.codebooks[0].copy_(z[:8])
        rq.codebooks[1].copy_(0.3 * torch.randn(8, 4))
    return rq, z


@pytest.mark.parametrize("estimator", ["ste", "gumbel", "soft"])
def test_gradients_reach_codebooks_and_encoder(estimator):
    rq, z = _quantizer()
    rq.train()
    z = z.clone().requires_grad_(True)
    gen = torch.Generator().manual_seed(0)
    out = rq(z, estimator=estimator, tau=1.0, noise_scale=0.5, generator=gen)
    assert out.codes.shape == (64, 2) and out.codes.dtype == torch.int64
    # forward value is the sum of the chosen codewords whatever the estimator
    assert torch.allclose(out.quantized, rq.lookup(out.codes), atol=1e-5)
    (out.loss + out.quantized.square().mean()).backward()
    for book in rq.codebooks:
        assert book.grad is not None and torch.isfinite(book.grad).all() and book.grad.abs().sum() > 0
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
    if estimator != "ste":  # the soft assignment alone carries gradient to every level's codebook and to z
        rq.zero_grad()
        z.grad = None
        rq(z, estimator=estimator, generator=gen).quantized.square().sum().backward()
        assert all(book.grad.abs().sum() > 0 for book in rq.codebooks)
        assert z.grad.abs().sum() > 0


def test_ste_passes_the_gradient_straight_through():
    rq, z = _quantizer()
    z = z.clone().requires_grad_(True)
    rq(z, estimator="ste").quantized.sum().backward()
    assert torch.allclose(z.grad, torch.ones_like(z))


def test_gumbel_noise_only_in_training_mode():
    rq, z = _quantizer()
    rq.eval()
    nearest, logits = rq.assign(z)
    assert [tuple(t.shape) for t in logits] == [(64, 8), (64, 8)]
    a = rq(z, estimator="gumbel", noise_scale=100.0).codes
    b = rq(z, estimator="gumbel", noise_scale=100.0).codes
    assert torch.equal(a, b) and torch.equal(a, nearest)
    rq.train()
    gen = torch.Generator().manual_seed(1)
    noisy = rq(z, estimator="gumbel", noise_scale=100.0, generator=gen).codes
    assert (noisy != nearest).any()
    # soft: the same quantiser without noise, also in training mode
    assert torch.equal(rq(z, estimator="soft", noise_scale=100.0).codes, nearest)
    with pytest.raises(SidrecError, match="estimator"):
        rq(z, estimator="nope")


@pytest.mark.parametrize("dead_after", [0, 3])
def test_dead_codes_are_reseeded(dead_after):
    torch.manual_seed(0)
    rq = ResidualQuantizer([16], dim=4)
    z = torch.randn(200, 4)
    with torch.no_grad():
        rq.codebooks[0][:4] = z[:4]
        rq.codebooks[0][4:] = 100.0 + torch.randn(12, 4)  # far away: never the nearest code
    rq.train()
    used_before = len(torch.unique(rq.assign(z)[0]))
    assert used_before == 4
    gen = torch.Generator().manual_seed(0)
    restarted = 0
    for _ in range(5):
        out = rq(z[torch.randperm(200, generator=gen)[:64]])
        restarted += sum(int(r.numel()) for r in rq.restart_dead_codes(out.codes, out.residuals, dead_after, gen))
    used_after = len(torch.unique(rq.assign(z)[0]))
    if dead_after:
        assert restarted >= 12 and used_after >= 14
        assert rq.codebooks[0].abs().max() < 50  # every far code was moved onto the data
    else:
        assert restarted == 0 and used_after == 4


def test_kmeans_init_covers_the_data():
    torch.manual_seed(0)
    rq = ResidualQuantizer([16, 8], dim=4)
    z = torch.from_numpy(clustered(n=400, d=4, k=16, seed=1))
    rq.kmeans_init(z, seed=0, niter=10)
    codes, _ = rq.assign(z)
    assert len(torch.unique(codes[:, 0])) == 16 and len(torch.unique(codes[:, 1])) >= 6
    err = (z - rq.lookup(codes)).square().sum() / (z - z.mean(0)).square().sum()
    assert err < 0.2


def test_without_kmeans_init_and_full_batch():
    x = clustered()
    tok = fit(seed=0, kmeans_init=False, batch_size=10_000, epochs=10, dead_code_steps=2)
    assert tok.history["steps"] == 10
    assert np.array_equal(tok.encode(x), fit(seed=0, kmeans_init=False, batch_size=10_000, epochs=10,
                                              dead_code_steps=2).encode(x))
