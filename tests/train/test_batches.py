import pytest

from semiseg_fast.train.batches import StepBatches, mix_seed


def _steps(size, batch, start, stop, rank=0, world=1, seed=3):
    return list(StepBatches(size, batch, seed, stream=1, start=start, stop=stop, rank=rank, world=world))


def test_each_epoch_is_a_permutation():
    flat = [i for b in _steps(10, 5, 0, 4) for i, _ in b]
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:]) == list(range(10))
    assert flat[:10] != flat[10:]  # a new order each epoch


def test_resume_repeats_the_same_batches():
    full = _steps(7, 3, 0, 10)
    assert _steps(7, 3, 4, 10) == full[4:]
    assert _steps(7, 3, 0, 10, seed=4) != full


def test_ranks_split_the_global_batch():
    single = _steps(11, 4, 0, 6)
    r0, r1 = _steps(11, 2, 0, 6, 0, 2), _steps(11, 2, 0, 6, 1, 2)
    assert [a + b for a, b in zip(r0, r1)] == single


def test_augmentation_seeds_differ_per_position():
    seeds = [s for b in _steps(5, 5, 0, 3) for _, s in b]
    assert len(set(seeds)) == len(seeds)
    assert mix_seed(1, 2) != mix_seed(2, 1) and 0 <= mix_seed(2**70, -1) < 2**63


def test_empty_dataset_is_an_error():
    with pytest.raises(ValueError, match="size"):
        StepBatches(0, 2, 0, 0, 0, 1)
