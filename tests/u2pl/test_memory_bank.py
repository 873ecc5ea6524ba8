import pytest
import torch

from semiseg_fast.reference.u2pl import MemoryBank
from semiseg_fast.u2pl import ClassMemoryBank


def test_fifo_matches_a_truncated_list_through_wraparound():
    caps = [7, 3, 5]
    bank, lists = ClassMemoryBank(3, 4, capacity=caps), MemoryBank(3, 4, caps)
    g = torch.Generator().manual_seed(0)
    for step in range(12):
        keys = torch.randn(3, 9, 4, generator=g)
        counts = torch.randint(0, 10, (3,), generator=g)
        bank.push(keys, counts)
        for c in range(3):
            lists.enqueue(c, keys[c, : counts[c]])
            assert torch.equal(bank.queue(c), lists.queues[c]), (step, c)
    assert bank.length.tolist() == [len(q) for q in lists.queues]


def test_gather_reads_logical_positions_and_empty_classes_read_zeros():
    bank = ClassMemoryBank(2, 2, capacity=4)
    bank.push(torch.arange(12.0).reshape(2, 3, 2), torch.tensor([3, 0]))
    bank.push(torch.arange(12.0, 24.0).reshape(2, 3, 2), torch.tensor([2, 0]))  # class 0 wraps: keeps 4 newest
    out = bank.gather(torch.tensor([0, 1]), torch.tensor([[0, 3], [0, 1]]))
    assert out[0].tolist() == [[2.0, 3.0], [14.0, 15.0]]
    assert torch.all(out[1] == 0)


def test_state_dict_round_trip():
    bank = ClassMemoryBank(2, 3, capacity=[4, 2])
    bank.push(torch.randn(2, 5, 3), torch.tensor([5, 1]))
    other = ClassMemoryBank(2, 3, capacity=[4, 2])
    other.load_state_dict(bank.state_dict())
    for c in range(2):
        assert torch.equal(other.queue(c), bank.queue(c))


def test_bad_arguments():
    with pytest.raises(ValueError, match="capacity: expected an int >= 1 or 2 of them"):
        ClassMemoryBank(2, 3, capacity=[4])
    bank = ClassMemoryBank(2, 3, capacity=4)
    with pytest.raises(ValueError, match=r"keys: expected shape \(2, L, 3\)"):
        bank.push(torch.zeros(3, 1, 3), torch.zeros(3))
