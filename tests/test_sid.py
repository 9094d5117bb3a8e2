"""Tokenizers (RQ-KMeans, OPQ/PQ), collisions, the SID table and diagnostics."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sidrec.errors import SidrecError
from sidrec.sid.base import build_tokenizer, load_tokenizer
from sidrec.sid.collisions import collision_stats, disambiguation_codes, resolve
from sidrec.sid.config import TokenizerConfig
from sidrec.sid.diagnostics import report
from sidrec.sid.pipeline import tokenize
from sidrec.sid.table import SIDTable


def clustered(n: int = 600, d: int = 16, k: int = 12, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((k, d)) * 3
    return (centres[rng.integers(0, k, n)] + rng.standard_normal((n, d))).astype(np.float32)


RQ = dict(kind="rqkmeans", levels=2, codebook_sizes=[16], kmeans_iters=10)
OPQ = dict(kind="opq", subspaces=4, subspace_codes=16, opq_iters=5, kmeans_iters=10)
PQ = dict(OPQ, kind="pq")


@pytest.mark.parametrize("opts", [RQ, dict(RQ, balanced=True), OPQ, PQ], ids=["rq", "rq-balanced", "opq", "pq"])
def test_same_seed_same_codes_and_encode_reproduces_fit(opts):
    x = clustered()
    a = build_tokenizer(TokenizerConfig(**opts, seed=3)).fit(x)
    b = build_tokenizer(TokenizerConfig(**opts, seed=3)).fit(x)
    ca = a.encode(x)
    assert np.array_equal(ca, b.encode(x))
    assert ca.shape[1] == len(a.codebook_sizes)
    # encoding items one chunk at a time gives the same codes as the whole catalogue
    assert np.array_equal(np.concatenate([a.encode(x[:7]), a.encode(x[7:])]), ca)
    assert a.decode(ca).shape == x.shape


def test_balanced_rqkmeans_caps_code_sizes():
    x = clustered(n=800, k=3)
    tok = build_tokenizer(TokenizerConfig(**dict(RQ, balanced=True, balance_factor=1.2))).fit(x)
    codes = tok.encode(x)
    cap = int(np.ceil(800 / 16 * 1.2))
    assert np.bincount(codes[:, 0]).max() <= cap
    plain = build_tokenizer(TokenizerConfig(**RQ)).fit(x).encode(x)
    assert np.bincount(plain[:, 0]).max() > cap  # the cap actually changed something on skewed data


@pytest.mark.parametrize("opts", [RQ, OPQ], ids=["rq", "opq"])
def test_save_load_round_trip_and_kind_check(tmp_path, opts):
    x = clustered()
    tok = build_tokenizer(TokenizerConfig(**opts)).fit(x)
    tok.save(tmp_path / "tok")
    back = load_tokenizer(tmp_path / "tok")
    assert type(back) is type(tok)
    assert np.array_equal(back.encode(x), tok.encode(x))
    assert np.allclose(back.decode(tok.encode(x)), tok.decode(tok.encode(x)), atol=1e-5)
    other = type(build_tokenizer(TokenizerConfig(**(OPQ if opts is RQ else RQ))))
    with pytest.raises(SidrecError, match="of kind"):
        other.load(tmp_path / "tok")


def test_bad_input_is_a_clear_error():
    x = clustered()
    tok = build_tokenizer(TokenizerConfig(**RQ))
    bad = x.copy()
    bad[5, 2] = np.nan
    with pytest.raises(SidrecError, match="NaN or inf.*row 5"):
        tok.fit(bad)
    with pytest.raises(SidrecError, match="not fitted"):
        tok.encode(x)
    tok.fit(x)
    with pytest.raises(SidrecError, match="dimension 16"):
        tok.encode(x[:, :8])
    with pytest.raises(SidrecError, match="fewer than the 16 codes"):
        build_tokenizer(TokenizerConfig(**RQ)).fit(x[:10])
    with pytest.raises(SidrecError, match="power of two"):
        build_tokenizer(TokenizerConfig(**dict(OPQ, subspace_codes=100)))
    with pytest.raises(SidrecError, match="not divisible"):
        build_tokenizer(TokenizerConfig(**dict(PQ, subspaces=5))).fit(x)
    with pytest.raises(SidrecError, match="unknown tokenizer.kind"):
        build_tokenizer(TokenizerConfig(kind="lsh"))
    with pytest.raises(SidrecError, match="one size per level"):
        build_tokenizer(TokenizerConfig(kind="rqkmeans", levels=3, codebook_sizes=[8, 8]))


def test_opq_reconstructs_better_than_pq():
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((1500, 16)) * np.linspace(5, 0.1, 16)).astype(np.float32)  # skewed variances
    errs = {}
    for opts in (OPQ, PQ):
        tok = build_tokenizer(TokenizerConfig(**opts)).fit(x)
        errs[opts["kind"]] = float(((tok.decode(tok.encode(x)) - x) ** 2).mean())
    assert errs["opq"] < errs["pq"]


def test_whitened_pca_gives_the_rotation_unit_variance_axes():
    """RPG whitens its PCA before OPQ, so every kept direction has the same variance in the subspace split; without
    whitening the skewed variances survive the (orthogonal) rotation."""
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((3000, 16)) * np.linspace(5, 0.5, 16)).astype(np.float32)
    for whiten in (True, False):
        tok = build_tokenizer(TokenizerConfig(**OPQ, pca_dim=8, pca_whiten=whiten)).fit(x)
        cov = np.cov(tok._project(x), rowvar=False)
        cov /= np.diag(cov).mean()  # faiss whitens to a common variance (1/n), not to 1: isotropy is what counts
        assert np.allclose(cov, np.eye(8), atol=0.05) == whiten
    low_rank = x[:, :4] @ rng.standard_normal((4, 16)).astype(np.float32)  # 4 directions, 8 asked for
    with pytest.raises(SidrecError, match="lower tokenizer.pca_dim"):
        build_tokenizer(TokenizerConfig(**OPQ, pca_dim=8, pca_whiten=True)).fit(low_rank)
    with pytest.raises(SidrecError, match="needs tokenizer.pca_dim"):
        build_tokenizer(TokenizerConfig(**OPQ, pca_whiten=True)).fit(x)


def test_opq_with_fewer_items_than_dimensions_fails_clearly():
    """faiss's OPQ rotation fit aborts the process (heap corruption) when n < d; the tokenizer must refuse
    first, with the fix in the message, and PCA down to n dimensions must then work."""
    x = clustered(n=40, d=64)
    with pytest.raises(SidrecError, match="fewer than the 64 embedding dimensions"):
        build_tokenizer(TokenizerConfig(**OPQ)).fit(x)
    codes = build_tokenizer(TokenizerConfig(**OPQ, pca_dim=32)).fit(x).encode(x)
    assert codes.shape == (40, 4)


# ---------------------------------------------------------------------------------------------- collisions
@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000))
def test_resolution_is_unique_and_stable_under_reordering(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 60))
    codes = rng.integers(0, 3, (n, 2))
    dist = rng.random(n).round(1)  # ties on distance happen, the fingerprint breaks them
    finger = rng.permutation(n).astype(np.int64)
    out, sizes = resolve(codes, dist, finger, codebook=64)
    assert sizes == [64] and out.shape == (n, 3)
    assert collision_stats(out).n_colliding_items == 0
    perm = rng.permutation(n)
    out_p, _ = resolve(codes[perm], dist[perm], finger[perm], codebook=64)
    assert np.array_equal(out_p, out[perm])


def test_disambiguation_order_closest_first():
    codes = np.array([[1, 2], [1, 2], [0, 0], [1, 2]])
    extra = disambiguation_codes(codes, np.array([0.5, 0.1, 9.0, 0.3]), np.zeros(4, dtype=np.int64))
    assert extra.tolist() == [2, 0, 0, 1]


def test_refuse_mode_and_overflow():
    codes = np.array([[1, 2], [1, 2], [0, 0]])
    with pytest.raises(SidrecError, match="2 items share"):
        resolve(codes, np.zeros(3), np.arange(3), mode="refuse")
    with pytest.raises(SidrecError, match="collision_codebook"):
        resolve(codes, np.zeros(3), np.arange(3), codebook=1)
    same, extra_sizes = resolve(np.array([[1, 2], [0, 0]]), np.zeros(2), np.arange(2), append=False)
    assert extra_sizes == [] and same.shape == (2, 2)


def test_tokenize_gives_unique_sids_and_order_independent_table():
    x = clustered(n=500)
    res = tokenize(TokenizerConfig(**RQ, seed=1), x)
    assert res.report["collisions_after"]["colliding_items"] == 0
    assert res.report["sid_length"] == 3
    # refit-free check of order independence: resolve the same tokenizer's codes on a permuted catalogue
    from sidrec.sid.pipeline import resolve_codes

    perm = np.random.default_rng(0).permutation(len(x))
    a, _ = resolve_codes(res.tokenizer, x, res.tokenizer.encode(x))
    b, _ = resolve_codes(res.tokenizer, x[perm], res.tokenizer.encode(x[perm]))
    assert np.array_equal(b, a[perm])


# ---------------------------------------------------------------------------------------------- SID table
def test_sid_table_many_to_one_round_trips_parquet(tmp_path):
    base = SIDTable.from_codes(np.array([[0, 1, 0], [0, 1, 1], [2, 0, 0]]), [4, 4, 4], ["a", "b", "c"])
    t = base.with_sids([2, 2, 0], np.array([[3, 3, 0], [3, 3, 1], [0, 1, 0]]), [0.6, 0.4, 1.0])
    assert t.n_sids == 5  # item 0's duplicate SID was merged
    t.save(tmp_path / "sids.parquet")
    back = SIDTable.load(tmp_path / "sids.parquet")
    assert back.item_ids == ["a", "b", "c"]
    assert torch.equal(back.primary, base.primary)
    assert back.codebook_sizes == [4, 4, 4]
    codes, w = back.sids_of(2)
    assert codes.tolist() == [[2, 0, 0], [3, 3, 0], [3, 3, 1]] and w.tolist() == pytest.approx([1.0, 0.6, 0.4])
    promoted = t.with_sids([2], np.array([[3, 3, 1]]), make_primary=True)
    assert promoted.primary[2].tolist() == [3, 3, 1] and promoted.n_sids == 5
    from sidrec.decoding.trie import SIDCodes, SIDTrie

    trie = SIDTrie.from_codes(SIDCodes.from_table(back))
    assert trie.items_of(torch.tensor([[3, 3, 1], [0, 1, 1], [3, 3, 3]])).tolist() == [2, 1, -1]


def test_sid_table_rejects_ambiguous_sids_and_bad_files(tmp_path):
    base = SIDTable.from_codes(np.array([[0, 1], [0, 2]]), [4, 4])
    with pytest.raises(SidrecError, match="belongs to items"):
        base.with_sids([1], np.array([[0, 1]]))
    with pytest.raises(SidrecError, match="primary"):
        SIDTable([0, 0], np.array([[0, 1], [0, 2]]), [4, 4], 2)
    with pytest.raises(SidrecError, match="outside"):
        SIDTable.from_codes(np.array([[0, 9]]), [4, 4])
    (tmp_path / "junk.parquet").write_bytes(b"not parquet")
    with pytest.raises(SidrecError, match="not a readable Parquet"):
        SIDTable.load(tmp_path / "junk.parquet")


# ---------------------------------------------------------------------------------------------- diagnostics
def test_collapsing_configuration_is_flagged():
    x = np.repeat(clustered(n=4, d=16), 100, axis=0)  # 4 distinct items repeated: 64 codes cannot all be used
    res = tokenize(TokenizerConfig(**dict(RQ, codebook_sizes=[64])), x)
    assert res.report["collapsed_levels"], res.report["utilization"]
    assert res.report["warnings"] and "collapse" in res.report["warnings"][0]
    healthy = tokenize(TokenizerConfig(**RQ), clustered(n=600))
    assert healthy.report["collapsed_levels"] == []


def test_report_numbers_by_hand():
    codes = np.array([[0, 0], [0, 1], [1, 1], [1, 1]])
    rep = report(codes, [4, 2])
    assert rep["utilization"] == [0.5, 1.0]
    assert rep["perplexity"][0] == pytest.approx(2.0)
    assert rep["collisions_before"]["colliding_items"] == 2 and rep["collisions_before"]["largest_group"] == 2


def test_cli_tokenize_and_bad_embeddings(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def run(*args):
        return subprocess.run([sys.executable, "-m", "sidrec.cli", "tokenize", *args], capture_output=True,
                              text=True, env=env, timeout=300, cwd=tmp_path)

    emb = clustered(n=120, d=16)
    np.save(tmp_path / "emb.npy", emb)
    common = ["data.path=synthetic", "data.synthetic_users=200", "data.synthetic_items=120", "features.kind=npy",
              f"features.npy_path={tmp_path / 'emb.npy'}", "tokenizer.codebook_sizes=[8]", "tokenizer.progress=false"]
    p = run(*common, "--run-dir", str(tmp_path / "ok"))
    assert p.returncode == 0, p.stderr
    rep = json.loads((tmp_path / "ok" / "tokenizer_report.json").read_text())
    assert rep["collisions_after"]["colliding_items"] == 0
    assert SIDTable.load(tmp_path / "ok" / "sid_table.parquet").n_items == 120
    emb[3, 0] = np.inf
    np.save(tmp_path / "emb.npy", emb)
    p = run(*common, "--run-dir", str(tmp_path / "bad"))
    assert p.returncode == 2 and "Traceback" not in p.stderr and "inf" in p.stderr, p.stderr
    assert not (tmp_path / "bad" / "sid_table.parquet").exists()
