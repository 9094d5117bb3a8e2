"""Dataset statistics of the three real benchmarks (what `sidrec data prepare` reports), with timings.

It also measures how the test targets differ from the validation targets, model-free: the test target is each
user's newest item, so it is on average less popular in the training portion. The popularity ranker's N@10 on
each split measures that drift directly; a trained model that leans on popularity loses on test about what the
popularity ranker loses, while a content kNN, which ignores popularity, does not (docs/RESULTS.md).
"""

from __future__ import annotations

import time

import numpy as np

from sidrec.data.formats import load_dataset
from sidrec.data.protocol import LeaveOneOut
from sidrec.eval.evaluator import Evaluator, popularity_scores

from _common import SHARED, record, save

DATASETS = {"beauty": "amazon14_beauty", "sports": "amazon14_sports", "toys": "amazon14_toys",
            "toys-s3rec": "amazon14_toys/s3rec_numbering"}


def main() -> None:
    recs = []
    for name, rel in DATASETS.items():
        t0 = time.time()
        ds = load_dataset(SHARED / rel)
        loo = LeaveOneOut.from_dataset(ds, 50, 5)
        wall = time.time() - t0
        c, v = loo.subset_counts("test"), loo.subset_counts("valid")
        # test targets are newer than validation targets, so more of them are cold; had the validation
        # interactions been training data (a protocol some code uses for the test run), fewer would be
        freq_tv = loo.item_freq + np.bincount(loo.valid.targets, minlength=ds.n_items)
        cold_tv = int((freq_tv[loo.test.targets] <= loo.cold_threshold).sum())
        metrics = {"users": ds.n_users, "items": ds.n_items, "interactions": ds.n_interactions,
                   "test_users_cold": c["cold"], "test_users_warm": c["warm"],
                   "valid_users_cold": v["cold"], "valid_users_warm": v["warm"],
                   "test_users_cold_if_valid_trained": cold_tv,
                   "cold_items": int(len(loo.cold_items())), "seq_len_mean": float(ds.lengths.mean())}
        for split in ("valid", "test"):
            es = loo.split(split)
            ev = Evaluator(es, loo.item_freq, [10], loo.cold_threshold)
            pop, _ = ev.evaluate_scores(popularity_scores(loo.item_freq))
            metrics[f"{split}_popularity_ndcg@10"] = pop["all"]["ndcg@10"]
            metrics[f"{split}_target_train_freq_median"] = float(np.median(loo.item_freq[es.targets]))
        recs.append(record(name, "data", "s3rec/p5 files", "test", "all", metrics, wall))
        print(name, metrics, f"{wall:.2f}s")
    print(save("data_prepare", recs))


if __name__ == "__main__":
    main()
