import numpy as np
import pytest

from sidrec.config import FeaturesConfig
from sidrec.data.dataset import Dataset
from sidrec.errors import SidrecError
from sidrec.features import check_embeddings, item_features, item_texts


def _ds():
    items = {"title": ["L&#39;Oreal Paris Mascara", "Plain Soap", None],
             "brand": ["L&#39;Oreal", None, "Unknown"], "categories": [["Makeup", "Eyes"], ["Bath"], None]}
    return Dataset.from_sequences("f", [[0, 1, 2]], ["a", "b", "c"], ["u"], items)


def test_template_unescapes_and_drops_empty_clauses():
    texts = item_texts(_ds(), FeaturesConfig().template)
    assert texts[0] == "L'Oreal Paris Mascara. Brand: L'Oreal. Categories: Makeup, Eyes."
    assert texts[1] == "Plain Soap. Categories: Bath."
    assert texts[2] == "item c"


def test_check_embeddings_rejects_nan_and_shape():
    with pytest.raises(SidrecError, match="NaN"):
        check_embeddings(np.array([[0.0, np.nan]]), 1)
    with pytest.raises(SidrecError, match="rows"):
        check_embeddings(np.zeros((2, 3)), 3)
    with pytest.raises(SidrecError, match="dimension"):
        check_embeddings(np.zeros((3, 3)), 3, dim=4)


def test_npy_features(tmp_path):
    p = tmp_path / "e.npy"
    np.save(p, np.ones((3, 4), dtype=np.float32))
    emb = item_features(FeaturesConfig(kind="npy", npy_path=str(p)), _ds())
    assert emb.shape == (3, 4)
    np.save(p, np.ones((2, 4), dtype=np.float32))
    with pytest.raises(SidrecError, match="2 rows"):
        item_features(FeaturesConfig(kind="npy", npy_path=str(p)), _ds())


def test_attribute_features_are_cached(tmp_path):
    items = {"attribute_ids": [["1", "2"], ["2", "3"], ["9"], []]}
    ds = Dataset.from_sequences("attr", [[0, 1, 2, 3]], list("abcd"), ["u"], items)
    cfg = FeaturesConfig(kind="attributes", svd_dim=2, cache_dir=str(tmp_path))
    e1 = item_features(cfg, ds)
    assert e1.shape == (4, 2) and np.isfinite(e1).all()
    assert len(list(tmp_path.glob("*.npy"))) == 1
    assert np.array_equal(item_features(cfg, ds), e1)


def test_text_features_offline_minilm(tmp_path):
    cfg = FeaturesConfig(kind="text", cache_dir=str(tmp_path), min_text_coverage=0.6)  # item c has no text
    emb = item_features(cfg, _ds(), progress=False)
    assert emb.shape == (3, 384)
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-4)
    assert emb[0] @ emb[1] < 0.99  # different texts, different vectors


def test_short_fields_come_first_and_cut_texts_are_counted():
    """A long description must not push the brand and categories past the encoder's token limit (issue 45)."""
    from sidrec.features.core import truncated_texts

    long = " ".join(["ingredient"] * 400)
    items = {"title": ["Night Cream", "Soap"], "brand": ["Acme", "Bub"], "categories": [["Skin"], ["Bath"]],
             "description": [long, "mild"]}
    texts = item_texts(Dataset.from_sequences("f", [[0, 1]], ["a", "b"], ["u"], items), "auto")
    assert texts[0].startswith("Night Cream. Brand: Acme. Categories: Skin. Description: ingredient")
    assert texts[1] == "Soap. Brand: Bub. Categories: Bath. Description: mild."
    cut, limit = truncated_texts(texts)
    assert (cut, limit) == (1, 256)
