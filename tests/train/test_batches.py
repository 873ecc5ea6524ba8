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


def test_schedule_sets_crop_and_batch_of_each_step():
    from semiseg_fast.train.schedule import Schedule

    sched = Schedule.fast2x(
        total_steps=10, lr=0.1, crop_size=32, low_res_fraction=0.6, low_res_scale=0.5, low_res_batch=2
    )
    steps = list(StepBatches(9, 3, 3, stream=1, start=0, stop=sched.num_steps, schedule=sched))
    assert [len(b) for b in steps] == [6, 6, 6, 3, 3, 3, 3]
    assert {c for b in steps[:3] for _, _, c in b} == {16} and {c for b in steps[3:] for _, _, c in b} == {32}
    # the same stream positions as ten plain steps of 3: every image once per epoch, in the same order
    plain = [(i, s) for b in _steps(9, 3, 0, 10) for i, s in b]
    assert [(i, s) for b in steps for i, s, _ in b] == plain
    for start in (2, 3, 5):  # inside the reduced phase, at its end, inside the full-size phase
        assert list(StepBatches(9, 3, 3, stream=1, start=start, stop=sched.num_steps, schedule=sched)) == steps[start:]
    r0, r1 = (list(StepBatches(9, 3, 3, 1, 0, sched.num_steps, rank, 2, schedule=sched)) for rank in (0, 1))
    assert [len(b) for b in r0] == [6, 6, 6, 3, 3, 3, 3]
    both = [x for a, b in zip(r0, r1) for x in a + b]
    assert [(i, s) for i, s, _ in both] == [(i, s) for b in _steps(9, 6, 0, 10) for i, s in b]
