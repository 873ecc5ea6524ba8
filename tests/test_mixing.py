import pytest
import torch

import semiseg_fast as sf
from semiseg_fast import mixing


def test_mixed_labels_equal_argmax_of_mixed_softmax():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(3, 7, 9, 11, generator=g) * 3, torch.randn(3, 7, 9, 11, generator=g) * 3
    mask = mixing.cps_box_masks(3, 9, 11, g)
    sa, sb = sf.pixel_stats(a), sf.pixel_stats(b)
    label, conf = mixing.mix_pseudo_labels(sa.label, sa.confidence, sb.label, sb.confidence, mask)
    mixed = torch.where(mask[:, None], a.softmax(1), b.softmax(1))
    assert torch.equal(label.long(), mixed.argmax(1))
    torch.testing.assert_close(conf, mixed.amax(1), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(mixing.mix_images(a, b, mask), torch.where(mask[:, None], a, b))


def test_depthmix_keeps_the_nearer_pixel():
    g = torch.Generator().manual_seed(1)
    da, db = torch.rand(2, 8, 8, generator=g) * 5 + 1, torch.rand(2, 8, 8, generator=g) * 3
    mask = mixing.depthmix_masks(da, db, margin=0.0)
    na = (da - da.amin((1, 2), keepdim=True)) / (da.amax((1, 2), keepdim=True) - da.amin((1, 2), keepdim=True))
    nb = (db - db.amin((1, 2), keepdim=True)) / (db.amax((1, 2), keepdim=True) - db.amin((1, 2), keepdim=True))
    assert torch.equal(mask, na >= nb)  # a nearer (larger normalised disparity) or tied: take a
    # the margin lets a win near-ties; the foreground threshold drops far pixels of a
    near_tie = (na < nb) & (na >= nb - 0.1)
    assert near_tie.any() and mixing.depthmix_masks(da, db, margin=0.1)[near_tie].all()
    assert not mixing.depthmix_masks(da, db, foreground_threshold=0.5)[na < 0.5].any()
    # invariant to per-image affine changes of disparity (min-max normalisation)
    assert torch.equal(mixing.depthmix_masks(da * 3 + 2, db, margin=0.0), mask)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int64])
def test_class_means_give_each_pixel_its_class_mean_in_its_image(dtype):
    g = torch.Generator().manual_seed(5)
    values = torch.randn(3, 7, 9, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 4, (3, 7, 9), generator=g).to(dtype)
    labels[0, :2] = 255
    labels[2] = 1  # one class over the whole image
    out = mixing.class_means(values, labels, num_classes=4)
    assert out.dtype == torch.float32
    for i in range(3):
        for c in range(4):
            region = labels[i] == c
            if region.any():
                torch.testing.assert_close(out[i][region], values[i][region].mean().float().expand(int(region.sum())))
    assert torch.equal(out[0, :2], values[0, :2].float())  # ignored pixels keep their own value


def test_class_means_refuse_labels_outside_the_classes():
    values, labels = torch.zeros(2, 3, 3), torch.zeros(2, 3, 3, dtype=torch.long)
    labels[1, 2, 2] = 4
    with pytest.raises(ValueError, match=r"labels: expected values in \[0, 4\) or ignore_index=255, got 4"):
        mixing.class_means(values, labels, num_classes=4)
    with pytest.raises(TypeError, match="labels: expected an integer dtype"):
        mixing.class_means(values, values, num_classes=4)
    with pytest.raises(ValueError, match="labels: expected shape"):
        mixing.class_means(values, labels[:, :2], num_classes=4)
    with pytest.raises(ValueError, match="num_classes: expected >= 1"):
        mixing.class_means(values, labels, num_classes=0)
    labels[1, 2, 2] = -1
    with pytest.raises(ValueError, match="got -1"):
        mixing.class_means(values, labels, num_classes=4)
    assert mixing.class_means(values, labels, num_classes=4, ignore_index=-1).shape == (2, 3, 3)


def test_classmix_takes_half_of_the_present_classes():
    g = torch.Generator().manual_seed(2)
    labels = torch.randint(0, 6, (4, 10, 10), generator=g, dtype=torch.uint8)
    labels[0] = 255
    labels[1, :5] = 255
    labels[1, 5:] = 3
    masks = mixing.classmix_masks(labels, g)
    assert not masks[0].any() and not masks[1].any()  # nothing or one class present: no class to take
    for i in (2, 3):
        present = torch.unique(labels[i])
        taken = torch.unique(labels[i][masks[i]])
        assert taken.numel() == present.numel() // 2
        assert torch.equal(masks[i], torch.isin(labels[i], taken))


def test_box_masks():
    g = torch.Generator().manual_seed(3)
    m = mixing.cutmix_masks(64, 20, 30, g, p=0.5)
    has_box = m.flatten(1).any(1)
    assert 16 < int(has_box.sum()) < 48
    for box in m[has_box]:
        rows, cols = box.any(1).nonzero(), box.any(0).nonzero()
        assert int(box.sum()) == (rows.numel() * cols.numel())  # one rectangle
        assert 0.02 * 600 * 0.5 <= box.sum() <= 0.4 * 600
    cps = mixing.cps_box_masks(64, 32, 32, g)
    frac = cps.float().mean(dim=(1, 2))
    assert (frac > 0).all() and (frac <= 0.5 + 0.05).all()
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    assert torch.equal(mixing.cps_box_masks(4, 16, 16, g1, invert=False), ~mixing.cps_box_masks(4, 16, 16, g2))


def test_argument_errors():
    x = torch.zeros(2, 4, 4)
    with pytest.raises(ValueError, match="disparity_b: expected shape"):
        mixing.depthmix_masks(x, torch.zeros(2, 4, 5))
    with pytest.raises(TypeError, match="mask: expected a bool tensor"):
        mixing.mix_pseudo_labels(x, x, x, x, x)
    with pytest.raises(ValueError, match="label_a: expected a 3-D tensor"):
        mixing.mix_pseudo_labels(x[0], x, x, x, x.bool())
    with pytest.raises(TypeError, match="labels: expected an integer dtype"):
        mixing.classmix_masks(x)
    with pytest.raises(ValueError, match="height: expected >= 1"):
        mixing.cutmix_masks(2, 0, 4)
    with pytest.raises(ValueError, match="p: expected <= 1.0"):
        mixing.cutmix_masks(2, 4, 4, p=2)
    with pytest.raises(ValueError, match="mask: expected a bool"):
        mixing.mix_images(torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 4, 4), x)
    with pytest.raises(ValueError, match="mask: expected a tensor on cpu"):
        mixing.mix_images(torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 4, 4), x.bool().to("meta"))
    with pytest.raises(ValueError, match="ratio_range: expected a finite number, got inf"):
        mixing.cutmix_masks(2, 4, 4, ratio_range=(1, float("inf")))


def test_empty_maps():
    assert mixing.depthmix_masks(torch.zeros(2, 0, 5), torch.zeros(2, 0, 5)).shape == (2, 0, 5)


def test_ignore_index_outside_the_label_dtype_ignores_nothing():
    # -1 cannot occur in uint8 labels; PyTorch would compare against 255 (a wrapped -1).
    labels = torch.full((1, 4, 4), 255, dtype=torch.uint8)
    labels[0, :2] = 1
    g = torch.Generator().manual_seed(0)
    assert mixing.classmix_masks(labels, g, ignore_index=-1).any()
