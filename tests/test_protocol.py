import numpy as np

from sidrec.data.dataset import Dataset
from sidrec.data.protocol import LeaveOneOut, bucket_labels, bucket_of


def _ds():
    seqs = [[0, 1, 2, 3, 4], [1, 2, 5], [3, 0], [2, 1, 0, 4, 5, 1]]
    return Dataset.from_sequences("t", seqs, [f"i{i}" for i in range(7)], ["a", "b", "c", "d"])


def test_leave_one_out_targets_and_histories():
    loo = LeaveOneOut.from_dataset(_ds(), max_len=2)
    assert list(loo.test.users) == [0, 1, 3]  # user c has only 2 items: training only
    assert loo.users_too_short == 1
    assert list(loo.test.targets) == [4, 5, 1]
    assert list(loo.valid.targets) == [3, 2, 5]
    # test history includes the validation item; both truncated to max_len
    assert [h.tolist() for h in loo.test.histories] == [[2, 3], [1, 2], [4, 5]]
    assert [h.tolist() for h in loo.valid.histories] == [[1, 2], [1], [0, 4]]


def test_item_frequencies_count_training_portion_only():
    loo = LeaveOneOut.from_dataset(_ds())
    # training: [0,1,2] + [1] + [3,0] (short user keeps all) + [2,1,0,4]
    expected = np.bincount([0, 1, 2, 1, 3, 0, 2, 1, 0, 4], minlength=7)
    assert loo.item_freq.tolist() == expected.tolist()
    assert loo.item_freq[5] == 0  # only ever a validation/test target -> cold, never leaked
    assert loo.is_cold(np.array([5]))[0]


def test_buckets():
    edges = [5, 10, 15, 20]
    assert bucket_labels(edges) == ["0-5", "6-10", "11-15", "16-20", ">20"]
    assert bucket_of(np.array([0, 5, 6, 10, 11, 20, 21, 500]), edges).tolist() == [0, 0, 1, 1, 2, 3, 4, 4]
