"""ACERec on an OPQ table where items share every content code: the collision code separates them.

Issue #16: with ``collision_code: false`` such items score identically and the Evaluator's index tie-break
orders them; modelling the appended code as one more subspace must give every item its own score.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sidrec.data.protocol import EvalSet
from sidrec.decoding.holistic import HolisticScorer
from sidrec.decoding.trie import SIDCodes
from sidrec.eval.evaluator import Evaluator
from sidrec.methods.acerec.model import ACERec, ACERecConfig
from sidrec.methods.acerec.task import raw_codes
from sidrec.sid.config import TokenizerConfig

# 8 items, 2 subspaces of 4 codes; items 0-3 share (1, 2) and items 4-5 share (3, 0); column 3 is the
# appended collision code (its own codebook of 4)
TABLE = torch.tensor([[1, 2, 0], [1, 2, 1], [1, 2, 2], [1, 2, 3], [3, 0, 0], [3, 0, 1], [0, 1, 0], [2, 3, 0]])


def _scores(collision_code: bool) -> torch.Tensor:
    torch.manual_seed(0)
    sids = SIDCodes.from_primary(TABLE, [4, 4, 4])
    codes, sizes = raw_codes(sids, TokenizerConfig(kind="opq", subspaces=2), collision_code)
    cfg = ACERecConfig(d_model=16, n_heads=2, n_layers=1, n_latents=2, ffn_dim=32)
    model = ACERec(codes, sizes, 5, cfg, np.ones(len(TABLE))).eval()
    hist = torch.tensor([[-1, 6, 7], [4, 0, 7]])
    with torch.no_grad():
        return HolisticScorer(codes).scores(model.log_probs(hist, model.item_table()))


def test_shared_codes_tie_without_and_separate_with_the_collision_code():
    plain = _scores(False)
    assert (plain[:, 0:4] == plain[:, :1]).all() and (plain[:, 4] == plain[:, 5]).all()
    separated = _scores(True)
    for row in separated:
        assert len(set(row.tolist())) == len(TABLE)  # every item its own score


def test_evaluator_sees_the_ties_go():
    es = EvalSet("test", np.arange(2), [np.array([6, 7]), np.array([4, 0, 7])], np.array([1, 5]))
    ev = Evaluator(es, np.ones(len(TABLE)), ks=[10])
    tied = [ev.evaluate_scores(lambda rows, s=s: s[rows])[0]["all"]["tied@10"] for s in (_scores(False), _scores(True))]
    assert tied[0] >= 6 / 8 and tied[1] == 0.0


def test_a_table_that_guarantees_ties_is_refused_in_one_line(tmp_path):
    """Issue #27: a setting whose codes leave items the model cannot tell apart is refused before training (one
    line naming the setting to change), not trained into a ranking with structural ties."""
    from sidrec.config import load_config
    from sidrec.errors import SidrecError
    from sidrec.methods.acerec.task import refuse_structural_ties
    from sidrec.pipeline import train

    sids = SIDCodes.from_primary(TABLE, [4, 4, 4])
    with pytest.raises(SidrecError, match=r"acerec: 6 of 8 items share all 2 codes.*acerec.collision_code=true"):
        refuse_structural_ties(raw_codes(sids, TokenizerConfig(kind="opq", subspaces=2), False)[0], False)
    refuse_structural_ties(raw_codes(sids, TokenizerConfig(kind="opq", subspaces=2), True)[0], True)  # no error
    # end to end: synthetic items with identical attributes get identical OPQ codes
    cfg = load_config(None, ["method=acerec", "size=none", "data.path=synthetic", "data.synthetic_users=200",
                             "data.synthetic_items=80", "features.kind=attributes", "tokenizer.kind=opq",
                             "tokenizer.subspaces=4", "tokenizer.subspace_codes=16", "acerec.collision_code=false",
                             "train.progress=false", f"run_dir={tmp_path / 'run'}"])
    with pytest.raises(SidrecError, match="tie in every ranking"):
        train(cfg)
    assert not (tmp_path / "run" / "checkpoints").exists()
