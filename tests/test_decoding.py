"""SID trie, trie-constrained beam search and the reference decoder (all fast, CPU, no training)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from sidrec.decoding.beam import beam_search, distinct_items
from sidrec.decoding.reference import dict_trie, reference_decode_one, sid_to_item
from sidrec.decoding.trie import SIDCodes, SIDTrie
from sidrec.errors import SidrecError
from sidrec.methods.tiger.model import TIGER, TIGERConfig

pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------------------------ helpers
CODES = [[0, 1, 2], [0, 1, 3], [0, 2, 0], [1, 0, 0], [2, 2, 2], [2, 2, 1]]
ITEMS = [0, 1, 2, 3, 4, 4]  # item 4 owns two SIDs
SIZES = [3, 3, 4]


class DummyDecoder:
    """A StepDecoder with fixed random log-probabilities: log p(c_t | user, prefix) is drawn once per
    (user, prefix) from a generator seeded by them, so any SID's score can be recomputed independently.

    It also checks the beam-search contract: at step t the prefixes are (B, W, t) and each one extends the
    previous step's prefix named by ``parent``.
    """

    def __init__(self, sizes: list[int], seed: int = 0, table: dict | None = None) -> None:
        self.sizes = sizes
        self.seed = seed
        self.table = table  # optional explicit {prefix tuple: log-probs}, same for every user
        self.calls = 0

    def log_probs(self, user: int, prefix: tuple[int, ...]) -> torch.Tensor:
        if self.table is not None:
            return torch.tensor(self.table[prefix], dtype=torch.float32)
        g = torch.Generator().manual_seed(hash((self.seed, user, prefix)) % (2**62))
        return (2.0 * torch.randn(self.sizes[len(prefix)], generator=g)).log_softmax(-1)

    def start_decoding(self, users: torch.Tensor) -> dict:
        return {"users": users.tolist(), "prev": None}

    def next_log_probs(self, state: dict, prefix: torch.Tensor | None, parent: torch.Tensor | None):
        self.calls += 1
        b = len(state["users"])
        if prefix is None:
            assert parent is None and state["prev"] is None
            prefix = torch.zeros(b, 1, 0, dtype=torch.long)
        else:
            prev = state["prev"]
            t = prefix.shape[2]
            assert prefix.shape[0] == b and parent is not None and parent.shape == prefix.shape[:2]
            assert parent.min() >= 0 and parent.max() < prev.shape[1]
            expect = prev.gather(1, parent.unsqueeze(2).expand(-1, -1, t - 1))
            assert torch.equal(prefix[:, :, :-1], expect), "prefix does not extend its parent"
        state["prev"] = prefix
        out = torch.stack([torch.stack([self.log_probs(u, tuple(p)) for p in rows.tolist()])
                           for u, rows in zip(state["users"], prefix, strict=True)])
        return state, out


def brute_force(dec: DummyDecoder, user: int, codes: list[list[int]], items: list[int]) -> list[tuple[int, float]]:
    """(item, best SID score) of every item, best first: every valid SID scored by the dummy model."""
    best: dict[int, float] = {}
    for sid, item in zip(codes, items, strict=True):
        s = torch.zeros((), dtype=torch.float32)
        for t in range(len(sid)):
            s = s + dec.log_probs(user, tuple(sid[:t]))[sid[t]]
        best[item] = max(best.get(item, -np.inf), float(s))
    return sorted(best.items(), key=lambda x: -x[1])


def random_sids(length: int, n: int, seed: int) -> tuple[list[list[int]], list[int], list[int]]:
    """``n`` distinct random SIDs of ``length`` codes (a sparse subset of all code tuples); items own 1-2 SIDs."""
    rng = np.random.default_rng(seed)
    sizes = [int(s) for s in rng.integers(2, 6, length)]
    allc = list(itertools.product(*[range(s) for s in sizes]))
    pick = rng.choice(len(allc), min(n, len(allc)), replace=False)
    codes = [list(allc[i]) for i in pick]
    n_items = max(1, len(codes) * 3 // 4)
    items = list(range(n_items)) + [int(i) for i in rng.integers(0, n_items, len(codes) - n_items)]
    return codes, items, sizes


# ------------------------------------------------------------------------------------------------ trie
def test_trie_build_walk_contains_items_of():
    trie = SIDTrie(CODES, ITEMS, SIZES)
    assert trie.depth == 3 and trie.n_leaves == 6
    assert [tuple(t.shape) for t in trie.tables] == [(1, 3), (3, 3), (4, 4)]
    assert trie.tables[0].tolist() == [[0, 1, 2]]
    # level-1 nodes in lexicographic order of prefixes: (0,1) (0,2) (1,0) (2,2)
    assert trie.tables[1].tolist() == [[-1, 0, 1], [2, -1, -1], [-1, -1, 3]]
    assert trie.children(1, torch.tensor([0, -1])).tolist() == [[-1, 0, 1], [-1, -1, -1]]
    codes = torch.tensor(CODES)
    leaves = trie.walk(codes)
    assert (leaves >= 0).all() and len(set(leaves.tolist())) == 6
    assert torch.equal(trie.leaf_codes[leaves], codes)
    assert trie.items_of(codes).tolist() == ITEMS
    bad = torch.tensor([[0, 1, 1], [1, 1, 0], [2, 2, 3], [0, 0, 0], [3, 0, 0], [-1, 1, 2], [0, 1, 4]])
    assert not trie.contains(bad).any()
    assert trie.items_of(bad).tolist() == [-1] * len(bad)
    assert trie.contains(codes.view(2, 3, 3)).shape == (2, 3)  # any leading shape


def test_trie_rejects_ambiguous_and_invalid_sids():
    with pytest.raises(SidrecError, match="two different items"):
        SIDTrie([[0, 1], [1, 0], [0, 1]], [0, 1, 2])
    SIDTrie([[0, 1], [1, 0], [0, 1]], [0, 1, 0])  # the same SID listed twice for one item is merged
    with pytest.raises(SidrecError, match="outside"):
        SIDTrie([[0, 3]], [0], [2, 3])
    with pytest.raises(SidrecError):
        SIDTrie([[0.5, 1.0]], [0])
    with pytest.raises(SidrecError, match="codebook sizes"):
        SIDTrie([[0, 1]], [0], [2, 2, 2])


def test_sid_codes_from_sid_table():
    from sidrec.sid.table import SIDTable

    table = SIDTable.from_codes(np.array([[0, 1, 0], [1, 1, 0], [0, 1, 1]]), [2, 2, 3])
    table = table.with_sids([1], [[1, 0, 2]])  # a second SID for item 1
    sids = SIDCodes.from_table(table)
    assert sids.sizes == [2, 2, 3] and sids.length == 3
    assert sids.primary.tolist() == [[0, 1, 0], [1, 1, 0], [0, 1, 1]]
    trie = SIDTrie.from_codes(sids)
    assert trie.items_of(torch.tensor([[1, 0, 2], [1, 1, 0], [0, 1, 1], [1, 0, 0]])).tolist() == [1, 1, 2, -1]


# ------------------------------------------------------------------------------------------------ beam search
def test_distinct_items_keeps_first_occurrence():
    items = torch.tensor([[3, 3, -1, 5, 3, 2], [-1, -1, -1, -1, -1, -1]])
    scores = torch.tensor([[-1.0, -2.0, float("-inf"), -3.0, -4.0, -5.0], [float("-inf")] * 6])
    it, sc = distinct_items(items, scores, 4)
    assert it.tolist() == [[3, 5, 2, -1], [-1] * 4]
    assert sc[0, :3].tolist() == [-1.0, -3.0, -5.0] and torch.isinf(sc[0, 3]) and torch.isinf(sc[1]).all()
    it, _ = distinct_items(items, scores, 2)
    assert it.tolist() == [[3, 5], [-1, -1]]


@pytest.mark.parametrize("length", [3, 4, 5])
def test_beam_search_only_emits_valid_sids(length):
    codes, items, sizes = random_sids(length, 25, seed=length)
    trie = SIDTrie(codes, items, sizes)
    dec = DummyDecoder(sizes, seed=length)
    users = torch.arange(4)
    for beam in (1, 3, 8, 64):
        res = beam_search(dec, (users,), trie, beam=beam, k=5)
        live = torch.isfinite(res.sid_scores)
        assert live.any(1).all()
        assert trie.contains(res.sids)[live].all(), "a live beam holds a SID outside the trie"
        assert torch.equal(trie.items_of(res.sids)[live], res.sid_items[live])
        assert (res.sid_items[~live] == -1).all()
        assert (res.sid_scores[:, :-1] >= res.sid_scores[:, 1:]).all()  # beams sorted by score
        for row in res.items.tolist():  # distinct items, -1 only as trailing padding
            real = [i for i in row if i >= 0]
            assert len(set(real)) == len(real) and row[:len(real)] == real
        # every returned item's score is the dummy model's score of one of its SIDs
        exact = {u: dict(brute_force(dec, u, codes, items)) for u in users.tolist()}
        for u in users.tolist():
            for it, sc in zip(res.items[u].tolist(), res.scores[u].tolist(), strict=True):
                if it >= 0:
                    assert sc <= exact[u][it] + 1e-5


@pytest.mark.parametrize("length", [3, 4, 5])
def test_wide_beam_equals_brute_force(length):
    codes, items, sizes = random_sids(length, 30, seed=10 + length)
    trie = SIDTrie(codes, items, sizes)
    dec = DummyDecoder(sizes, seed=length)
    users = torch.arange(3)
    w = len(codes)  # a beam at least as wide as the number of SIDs keeps every valid prefix: exact search
    res = beam_search(dec, (users,), trie, beam=w, k=w)
    for u in users.tolist():
        exact = brute_force(dec, u, codes, items)
        got = [(i, s) for i, s in zip(res.items[u].tolist(), res.scores[u].tolist(), strict=True) if i >= 0]
        assert [i for i, _ in got] == [i for i, _ in exact]
        assert np.allclose([s for _, s in got], [s for _, s in exact], atol=1e-5)
        assert res.items[u, len(exact):].eq(-1).all()
    # top-10 of the exact search = top-10 of the brute force
    top = beam_search(dec, (users,), trie, beam=w, k=10)
    for u in users.tolist():
        assert top.items[u].tolist() == [i for i, _ in brute_force(dec, u, codes, items)[:10]]


def test_item_with_two_sids_returned_once_with_best_score():
    # log p: level 0 (0: .9, 1: .1); after 0: (0: .6, 1: .4); after 1: (0: .5, 1: .5)
    table = {(): np.log([0.9, 0.1]), (0,): np.log([0.6, 0.4]), (1,): np.log([0.5, 0.5])}
    dec = DummyDecoder([2, 2], table=table)
    trie = SIDTrie([[0, 0], [0, 1], [1, 0]], [7, 7, 3], [2, 2])  # item 7 owns (0,0) and (0,1)
    res = beam_search(dec, (torch.arange(2),), trie, beam=4, k=3)
    assert res.sid_items[0].tolist() == [7, 7, 3, -1]
    assert res.items.tolist() == [[7, 3, -1]] * 2
    assert np.allclose(res.scores[:, :2].numpy(), np.log([[0.54, 0.05]] * 2), atol=1e-6)
    assert torch.isinf(res.scores[:, 2]).all()


# ------------------------------------------------------------------------------------------------ TIGER
def tiny_tiger(user_buckets: int = 16, seed: int = 0) -> tuple[TIGER, SIDCodes]:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    sizes = [5, 4, 3]
    allc = np.array(list(itertools.product(*[range(s) for s in sizes])))
    primary = allc[rng.choice(len(allc), 30, replace=False)]
    rest = np.array([c for c in allc.tolist() if c not in primary.tolist()])
    extra = rest[rng.choice(len(rest), 6, replace=False)]  # six items get a second SID
    codes = np.concatenate([primary, extra])
    sid_item = np.concatenate([np.arange(30), rng.choice(30, 6, replace=False)])
    cfg = TIGERConfig(d_model=32, encoder_layers=2, decoder_layers=2, n_heads=2, head_dim=16, ffn_dim=64,
                      dropout=0.1, user_buckets=user_buckets)
    model = TIGER(sizes, 8, cfg).eval()
    with torch.no_grad():  # larger output weights than the init: peaked, well-separated log-probs
        model.head.weight.mul_(8.0)
    return model, SIDCodes(torch.from_numpy(primary), torch.from_numpy(codes), torch.from_numpy(sid_item), sizes)


def histories(sids: SIDCodes, n: int, seed: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Left-padded history SIDs (n, T, L) and the unpadded ones per user (1, t_u, L)."""
    rng = np.random.default_rng(seed)
    lens = rng.integers(0, 8, n)
    lens[0] = 8
    t = int(lens.max())
    items = np.full((n, t), -1)
    for u, ln in enumerate(lens):
        items[u, t - ln:] = rng.integers(0, len(sids.primary), ln)
    items_t = torch.from_numpy(items)
    codes = sids.primary[items_t.clamp(min=0)].masked_fill((items_t < 0).unsqueeze(-1), -1)
    per_user = [codes[u:u + 1, t - ln:] if ln else codes[u:u + 1, -1:] for u, ln in enumerate(lens)]
    return codes, per_user


@pytest.mark.parametrize("kv_cache", [True, False])
@pytest.mark.parametrize("user_buckets", [16, 0])
def test_reference_decoder_agrees_with_beam_search(kv_cache, user_buckets):
    model, sids = tiny_tiger(user_buckets)
    model.cfg.kv_cache = kv_cache
    trie = SIDTrie.from_codes(sids)
    allowed, owner = dict_trie(sids.codes), sid_to_item(sids.codes, sids.sid_item)
    n = 12
    hist, per_user = histories(sids, n, seed=1)
    users = torch.arange(100, 100 + n)
    u_in = users if user_buckets else None
    for beam, k in ((5, 5), (10, 8), (40, 12)):
        res = beam_search(model, (hist, u_in), trie, beam=beam, k=k)
        live = torch.isfinite(res.sid_scores)
        assert trie.contains(res.sids)[live].all()
        for u in range(n):
            items, scores = reference_decode_one(model, per_user[u], users[u:u + 1] if user_buckets else None,
                                                 allowed, owner, trie.depth, beam=beam, k=k)
            got = [i for i in res.items[u].tolist() if i >= 0]
            assert got == items, (u, beam, got, items)
            assert np.allclose(res.scores[u, :len(items)].numpy(), scores, atol=1e-4)


def test_kv_cache_matches_recompute_and_teacher_forcing():
    model, sids = tiny_tiger()
    hist, _ = histories(sids, 5, seed=2)
    users = torch.arange(5)
    g = torch.Generator().manual_seed(0)
    p1 = torch.randint(0, sids.sizes[0], (5, 3, 1), generator=g)  # 3 hypotheses per user after step 0
    parent1 = torch.tensor([[2, 0, 0], [1, 1, 2], [0, 1, 2], [2, 2, 2], [1, 0, 1]])  # reordered at step 1
    p2 = torch.cat([p1.gather(1, parent1.unsqueeze(2)), torch.randint(0, sids.sizes[1], (5, 3, 1), generator=g)], 2)
    outs = []
    for kv in (True, False):
        model.cfg.kv_cache = kv
        st = model.start_decoding(hist, users)
        st, lp0 = model.next_log_probs(st, None, None)
        st, lp1 = model.next_log_probs(st, p1, torch.zeros(5, 3, dtype=torch.long))
        st, lp2 = model.next_log_probs(st, p2, parent1)
        assert (st.self_kv is not None) == kv
        assert lp0.shape == (5, 1, sids.sizes[0]) and lp1.shape == (5, 3, sids.sizes[1])
        assert lp2.shape == (5, 3, sids.sizes[2])
        outs.append((lp0, lp1, lp2))
    for a, b in zip(*outs, strict=True):
        assert torch.allclose(a, b, atol=1e-5)
    # the same numbers as the teacher-forced decoder used in training
    memory, valid = model.encode(hist, users)
    for w in range(3):
        h = model.decode(memory, valid, p2[:, w])
        assert torch.allclose(model.level_logits(h[:, 0], 0).log_softmax(-1), outs[0][0][:, 0], atol=1e-5)
        assert torch.allclose(model.level_logits(h[:, 1], 1).log_softmax(-1), outs[0][1].gather(
            1, parent1[:, w].view(5, 1, 1).expand(-1, -1, sids.sizes[1])).squeeze(1), atol=1e-5)
        assert torch.allclose(model.level_logits(h[:, 2], 2).log_softmax(-1), outs[0][2][:, w], atol=1e-5)


def test_beam_search_runs_under_bf16_autocast():
    model, sids = tiny_tiger()
    trie = SIDTrie.from_codes(sids)
    hist, _ = histories(sids, 6, seed=3)
    for kv in (True, False):
        model.cfg.kv_cache = kv
        with torch.autocast("cpu", dtype=torch.bfloat16):
            res = beam_search(model, (hist, torch.arange(6)), trie, beam=10, k=10)
        live = torch.isfinite(res.sid_scores)
        assert live.all() and trie.contains(res.sids).all()
        assert (res.items[:, 0] >= 0).all()
