import pytest
import torch

import semiseg_fast as sf
from semiseg_fast.reference import u2pl as ref
from semiseg_fast.u2pl import alpha_t, drop_percent, u2pl_unsupervised_loss
from tests.helpers import ALL, make_logits


def teacher_with_separated_entropies(n, c, h, w, seed=0):
    """Teacher logits whose pixel entropies are all distinct and far apart (one direction, scaled
    by a shuffled ramp), so the official entropy formula and the exact one drop the same pixels."""
    g = torch.Generator().manual_seed(seed)
    direction = torch.randn(c, generator=g)
    scale = torch.linspace(0.2, 6.0, n * h * w)[torch.randperm(n * h * w, generator=g)]
    return (scale.view(n, h, w, 1) * direction).permute(0, 3, 1, 2).contiguous()


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("percent", [80.0, 93.5, 100.0, 0.0])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_matches_official_transcription(backend, percent, layout):
    n, c, h, w = 2, 19, 9, 11
    student = make_logits(n, c, h, w, layout=layout, requires_grad=True)
    teacher = teacher_with_separated_entropies(n, c, h, w)
    pseudo = teacher.argmax(1)
    pseudo[0, :2] = 255
    with sf.backend(backend):
        loss = u2pl_unsupervised_loss(student, teacher, pseudo.to(torch.uint8), percent)
    g = torch.autograd.grad(loss, student)[0]
    s2 = student.detach().clone().requires_grad_()
    expected = ref.unsupervised_loss(s2, pseudo, percent, teacher)
    g_ref = torch.autograd.grad(expected, s2)[0]
    if percent == 0.0:  # everything dropped: official NaN (0 / 0), ours 0
        assert torch.isnan(expected) and loss == 0 and torch.all(g == 0)
        return
    torch.testing.assert_close(loss, expected, rtol=2e-5, atol=1e-6)
    torch.testing.assert_close(g, g_ref, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("backend", ["cpp", "triton"])
def test_bf16_student(backend):
    n, c, h, w = 2, 21, 5, 7
    student = make_logits(n, c, h, w, dtype=torch.bfloat16, requires_grad=True)
    teacher = teacher_with_separated_entropies(n, c, h, w, seed=1)
    pseudo = teacher.argmax(1)
    with sf.backend(backend):
        loss = u2pl_unsupervised_loss(student, teacher, pseudo, 80.0)
    g = torch.autograd.grad(loss, student)[0]
    s2 = student.detach().float().requires_grad_()
    expected = ref.unsupervised_loss(s2, pseudo, 80.0, teacher)
    torch.testing.assert_close(loss, expected, rtol=2e-5, atol=1e-6)
    torch.testing.assert_close(g.float(), torch.autograd.grad(expected, s2)[0], rtol=1.6e-2, atol=1e-5)


def test_schedules():
    assert drop_percent(0, 80) == 80.0
    assert drop_percent(40, 80) == pytest.approx(90.0)
    assert alpha_t(0, 80) == 20.0 and alpha_t(40, 80) == pytest.approx(10.0)
    assert drop_percent(0, 10, initial=50) == 50.0
    with pytest.raises(ValueError, match="epoch: expected 0 <= epoch <= epochs=10"):
        drop_percent(11, 10)
    with pytest.raises(ValueError, match="epochs: expected > 0"):
        alpha_t(0, 0)


def test_argument_errors():
    x = torch.randn(1, 3, 4, 4)
    with pytest.raises(ValueError, match="percent: expected <= 100"):
        u2pl_unsupervised_loss(x, x, torch.zeros(1, 4, 4, dtype=torch.long), 101)
    with pytest.raises(TypeError, match="pseudo_label: expected an integer dtype"):
        u2pl_unsupervised_loss(x, x, torch.zeros(1, 4, 4), 80)
    with pytest.raises(ValueError, match="teacher: expected the shape of student_logits"):
        u2pl_unsupervised_loss(x, x[:, :2], torch.zeros(1, 4, 4, dtype=torch.long), 80)
    with pytest.raises(ValueError, match=r"teacher: expected teacher logits .* or a floating entropy map \(1, 4, 4\)"):
        u2pl_unsupervised_loss(x, torch.rand(1, 4, 5), torch.zeros(1, 4, 4, dtype=torch.long), 80)
    with pytest.raises(TypeError, match="teacher: expected a torch.Tensor"):
        u2pl_unsupervised_loss(x, [1.0], torch.zeros(1, 4, 4, dtype=torch.long), 80)


@pytest.mark.parametrize("backend", ["reference", "cpp"])
def test_teacher_statistics_from_a_pass_already_made_give_the_same_loss(backend):
    """Logits, their PixelStats, or the entropy map alone: one loss and one gradient."""
    g = torch.Generator().manual_seed(4)
    student = torch.randn(2, 5, 9, 8, generator=g)
    teacher = torch.randn(2, 5, 9, 8, generator=g) * 3
    pseudo = teacher.argmax(1).to(torch.uint8)
    pseudo[0, :2] = 255
    results = []
    with sf.backend(backend):
        stats = sf.pixel_stats(teacher)
        for given in (teacher, stats, stats.entropy):
            x = student.clone().requires_grad_()
            loss = u2pl_unsupervised_loss(x, given, pseudo, 70.0)
            results.append((loss.detach(), torch.autograd.grad(loss, x)[0]))
    for loss, grad in results[1:]:
        assert torch.equal(loss, results[0][0]) and torch.equal(grad, results[0][1])


@pytest.mark.parametrize("backend", ["reference", "cpp"])
@pytest.mark.parametrize("align_corners", [False, True])
def test_size_gives_the_loss_of_the_upsampled_logits(backend, align_corners):
    """size=(H, W): student and teacher logits at the decoder's resolution, pseudo-labels and any
    given entropy map at (H, W); the loss and gradient of the upsampled logits' (the N*H*W of the
    official weight is the full size's)."""
    g = torch.Generator().manual_seed(5)
    student = torch.randn(2, 5, 5, 6, generator=g)
    teacher = teacher_with_separated_entropies(2, 5, 5, 6, seed=5)
    size = (13, 17)
    up = lambda t: torch.nn.functional.interpolate(t, size=size, mode="bilinear", align_corners=align_corners)
    pseudo = up(teacher).argmax(1).to(torch.uint8)
    pseudo[0, :3] = 255
    with sf.backend(backend):
        x = student.clone().requires_grad_()
        expected = u2pl_unsupervised_loss(up(x), up(teacher), pseudo, 70.0)
        (expected_grad,) = torch.autograd.grad(expected, x)
        stats = sf.pixel_stats(teacher, size=size, align_corners=align_corners)
        for given in (teacher, stats, stats.entropy):
            loss = u2pl_unsupervised_loss(x, given, pseudo, 70.0, size=size, align_corners=align_corners)
            (grad,) = torch.autograd.grad(loss, x)
            torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(grad, expected_grad, rtol=1e-4, atol=1e-7)
        with pytest.raises(ValueError, match=r"entropy map \(2, 13, 17\) \(at size=\(13, 17\)\)"):
            u2pl_unsupervised_loss(x, sf.pixel_stats(teacher), pseudo, 70.0, size=size)
        with pytest.raises(ValueError, match="pseudo_label: expected shape"):
            u2pl_unsupervised_loss(x, teacher, pseudo[:, :-1], 70.0, size=size)
