import numpy as np
import pytest

from sidrec.data.dataset import Dataset
from sidrec.errors import SidrecError


def test_time_order_with_stable_tie_break():
    users = ["u1", "u1", "u1", "u2", "u2"]
    items = ["c", "a", "b", "a", "b"]
    ts = [3.0, 1.0, 1.0, 5.0, 2.0]
    ds = Dataset.from_interactions("t", users, items, ts)
    ids = ds.item_ids
    assert [ids[i] for i in ds.sequence(0)] == ["a", "b", "c"]  # a and b tie at t=1: input order kept
    assert [ids[i] for i in ds.sequence(1)] == ["b", "a"]


def test_kcore_iterates_until_stable():
    # e is rare -> u4 drops below 2 -> then d drops below 2 -> u3 keeps a, c: three rounds of removal
    seqs = {"u1": "abc", "u2": "ab", "u3": "acd", "u4": "de"}
    users = [u for u, s in seqs.items() for _ in s]
    items = [i for s in seqs.values() for i in s]
    ds = Dataset.from_interactions("t", users, items, None, kcore=2)
    rep = ds.filter_report
    assert rep is not None and rep.rounds == 4
    assert (rep.users_removed, rep.items_removed, rep.interactions_removed) == (1, 2, 3)
    assert sorted(ds.item_ids) == ["a", "b", "c"] and ds.n_interactions == 7
    with pytest.raises(SidrecError, match="no interactions left"):
        Dataset.from_interactions("t", users, items, None, kcore=3)


def test_save_load_roundtrip(tmp_path, tiny_synthetic):
    ds = tiny_synthetic
    ds.save(tmp_path / "prep")
    again = Dataset.load(tmp_path / "prep")
    assert again.n_users == ds.n_users and again.n_items == ds.n_items
    assert np.array_equal(again.flat, ds.flat) and np.array_equal(again.offsets, ds.offsets)
    assert again.items["title"] == ds.items["title"]
    assert again.items["categories"][0] == ds.items["categories"][0]
    assert not list(tmp_path.glob(".*tmp"))  # no temporary leftovers
