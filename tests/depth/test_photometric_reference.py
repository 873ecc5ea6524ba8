"""The photometric loss's reference against a pixel-by-pixel transcription of its definition."""

import pytest
import torch

from semiseg_fast.reference.photometric import photometric_loss


def _reflect(i, n):
    return -i if i < 0 else 2 * (n - 1) - i if i >= n else i


def _pixel_error(t, w, y, x, alpha):
    """One pixel's error, from the 3x3 reflected window, channel by channel."""
    _, h, wd = t.shape
    total_ssim, total_l1 = 0.0, 0.0
    for c in range(t.shape[0]):
        window = [(_reflect(y + dy, h), _reflect(x + dx, wd)) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
        a = torch.stack([w[c, i, j] for i, j in window])  # x: the warped image (SSIM's first argument)
        b = torch.stack([t[c, i, j] for i, j in window])
        mu_a, mu_b = a.mean(), b.mean()
        var_a, var_b = (a * a).mean() - mu_a**2, (b * b).mean() - mu_b**2
        cov = (a * b).mean() - mu_a * mu_b
        ssim = ((2 * mu_a * mu_b + 1e-4) * (2 * cov + 9e-4)) / ((mu_a**2 + mu_b**2 + 1e-4) * (var_a + var_b + 9e-4))
        total_ssim += float(torch.clamp((1 - ssim) / 2, 0, 1))
        total_l1 += float((t[c, y, x] - w[c, y, x]).abs())
    c = t.shape[0]
    return alpha * total_ssim / c + (1 - alpha) * total_l1 / c


@pytest.mark.parametrize("sources,with_identity", [(1, False), (2, False), (1, True), (2, True)])
@pytest.mark.parametrize("h,w", [(2, 2), (3, 5), (4, 7)])
def test_matches_the_definition_pixel_by_pixel(sources, with_identity, h, w):
    g = torch.Generator().manual_seed(h * 10 + w + sources)
    n = 2
    target = torch.rand(n, 3, h, w, generator=g, dtype=torch.float64)
    warped = torch.rand(sources, n, 3, h, w, generator=g, dtype=torch.float64)
    identity = torch.rand(sources, n, 3, h, w, generator=g, dtype=torch.float64) if with_identity else None
    loss, winner = photometric_loss(target, warped, identity, return_winner=True)
    total = 0.0
    for k in range(n):
        for y in range(h):
            for x in range(w):
                errs = [_pixel_error(target[k], warped[s, k], y, x, 0.85) for s in range(sources)]
                best = min(errs)
                expected_winner = errs.index(best)
                if with_identity:
                    still = min(_pixel_error(target[k], identity[s, k], y, x, 0.85) for s in range(sources))
                    if still < best:
                        best, expected_winner = still, -1
                total += best
                assert int(winner[k, y, x]) == expected_winner
    assert float(loss) == pytest.approx(total / (n * h * w), rel=1e-12)


def test_ties_go_to_the_first_warped_source_and_never_to_identity():
    g = torch.Generator().manual_seed(0)
    target = torch.rand(1, 3, 4, 4, generator=g, dtype=torch.float64)
    same = torch.rand(1, 3, 4, 4, generator=g, dtype=torch.float64)
    warped = torch.stack([same, same]).requires_grad_()
    loss, winner = photometric_loss(target, warped, torch.stack([same, same]), return_winner=True)
    assert torch.equal(winner, torch.zeros_like(winner))
    (grad,) = torch.autograd.grad(loss, warped)
    assert grad[0].abs().sum() > 0 and torch.equal(grad[1], torch.zeros_like(grad[1]))


def test_gradient_reaches_warped_only_and_is_right():
    g = torch.Generator().manual_seed(1)
    target = torch.rand(2, 3, 5, 6, generator=g, dtype=torch.float64, requires_grad=True)
    warped = torch.rand(2, 2, 3, 5, 6, generator=g, dtype=torch.float64, requires_grad=True)
    identity = torch.rand(2, 2, 3, 5, 6, generator=g, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(lambda w: photometric_loss(target.detach(), w, identity.detach()), (warped,))
    _, g_identity = torch.autograd.grad(
        photometric_loss(target, warped, identity), (warped, identity), allow_unused=True
    )
    assert g_identity is None


def test_a_nan_anywhere_in_a_pixels_candidates_makes_the_loss_nan():
    target = torch.rand(1, 3, 4, 4, dtype=torch.float64)
    warped = torch.rand(2, 1, 3, 4, 4, dtype=torch.float64)
    identity = torch.rand(2, 1, 3, 4, 4, dtype=torch.float64)
    identity[1, 0, 2, 3, 3] = float("nan")
    assert photometric_loss(target, warped).isfinite()
    warped.requires_grad_()
    loss = photometric_loss(target, warped, identity)
    (grad,) = torch.autograd.grad(loss, warped)
    # the identity error is NaN at the pixels whose 3x3 window holds (3, 3): rows and columns 2-3;
    # identity has no gradient, so only those pixels' own gradients are NaN, every source and channel
    expected = torch.zeros(2, 1, 3, 4, 4, dtype=torch.bool)
    expected[..., 2:, 2:] = True
    assert loss.isnan() and torch.equal(grad.isnan(), expected)
