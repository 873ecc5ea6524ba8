"""The ops are torch.library custom ops with fake implementations and registered autograd:
a loss built from them compiles with fullgraph=True (no graph breaks) and matches eager."""

import pytest
import torch

import semiseg_fast as sf
from tests.helpers import FUSED


def unimatch_style_loss(pred_x, mask_x, pred_s, pred_w, ignore_mask):
    """Supervised CE + FixMatch loss + an entropy term, the shape of a real training step."""
    loss_x = sf.pseudo_label_cross_entropy(pred_x, mask_x)
    loss_u, ratio = sf.fixmatch_loss(pred_s, pred_w.detach(), 0.7, ignore_mask=ignore_mask, return_mask_ratio=True)
    stats = sf.pixel_stats(pred_s)
    conf_weight = (stats.confidence >= 0.5).float()
    loss_w = sf.pseudo_label_cross_entropy(pred_s, stats.label, weight=conf_weight, normalizer="weighted")
    return loss_x + loss_u + 0.1 * loss_w + 0.01 * stats.entropy.mean(), ratio


@pytest.mark.parametrize("backend", FUSED)
def test_fullgraph_compile_matches_eager(backend):
    torch._dynamo.reset()
    n, c, h, w = 2, 7, 6, 5
    pred_x = torch.randn(n, c, h, w, requires_grad=True)
    pred_s = torch.randn(n, c, h, w, requires_grad=True)
    pred_w = torch.randn(n, c, h, w) * 4
    mask_x = torch.randint(0, c, (n, h, w), dtype=torch.uint8)
    ignore_mask = torch.zeros(n, h, w, dtype=torch.long)
    ignore_mask[:, 0] = 255
    args = (pred_x, mask_x, pred_s, pred_w, ignore_mask)

    with sf.backend(backend):
        eager, ratio = unimatch_style_loss(*args)
        ge = torch.autograd.grad(eager, (pred_x, pred_s))
        compiled_fn = torch.compile(unimatch_style_loss, fullgraph=True, backend="aot_eager")
        comp, ratio_c = compiled_fn(*args)
        gc = torch.autograd.grad(comp, (pred_x, pred_s))
    torch.testing.assert_close(comp, eager)
    torch.testing.assert_close(ratio_c, ratio)
    for a, b in zip(gc, ge):
        torch.testing.assert_close(a, b)


def test_inductor_compile_runs_the_cpp_kernels():
    torch._dynamo.reset()
    x = torch.randn(1, 5, 4, 4, requires_grad=True)
    t = torch.randn(1, 5, 4, 4) * 5
    fn = torch.compile(lambda a, b: sf.fixmatch_loss(a, b, 0.5) * 2, fullgraph=True)
    with sf.backend("cpp"):
        out = fn(x, t)
        out.backward()
        ref = sf.fixmatch_loss(x.detach().requires_grad_(), t, 0.5) * 2
    torch.testing.assert_close(out, ref)
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_compile_pseudoseg_loss_fullgraph():
    torch._dynamo.reset()
    z = torch.randn(2, 5, 4, 4, requires_grad=True)
    p, m = torch.randn(2, 5, 4, 4) * 4, torch.randn(2, 5, 4, 4)
    valid = torch.rand(2, 4, 4) > 0.3
    fn = torch.compile(lambda z, p, m: sf.pseudoseg_consistency_loss(z, p, m, valid) * 2, fullgraph=True)
    with sf.backend("cpp"):
        out = fn(z, p, m)
        (g,) = torch.autograd.grad(out, z)
        ref = sf.pseudoseg_consistency_loss(z, p, m, valid) * 2
        (g_ref,) = torch.autograd.grad(ref, z)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(g, g_ref)


def test_compile_fixmatch_loss_at_the_decoder_resolution_fullgraph():
    torch._dynamo.reset()
    x = torch.randn(2, 5, 4, 6, requires_grad=True)
    t = torch.randn(2, 5, 4, 6) * 4
    fn = torch.compile(lambda x, t: sf.fixmatch_loss(x, t, 0.5, size=(9, 13), align_corners=True), fullgraph=True)
    with sf.backend("cpp"):
        out = fn(x, t)
        (g,) = torch.autograd.grad(out, x)
        ref = sf.fixmatch_loss(x, t, 0.5, size=(9, 13), align_corners=True)
        (g_ref,) = torch.autograd.grad(ref, x)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(g, g_ref)
    assert g.shape == x.shape


RESAMPLING_OPS = ["pixel_stats", "pseudo_label_cross_entropy", "fixmatch_loss", "pseudoseg_loss"]
OPCHECK_CASES = [(op, None) for op in RESAMPLING_OPS + ["select_rank", "infonce", "pixel_rows", "newest_negatives"]]
OPCHECK_CASES += [(op, [7, 9]) for op in RESAMPLING_OPS]


@pytest.mark.parametrize(
    "op,size", OPCHECK_CASES, ids=[f"{op}-{'resampled' if s else 'plain'}" for op, s in OPCHECK_CASES]
)
def test_opcheck(op, size):
    """torch.library.opcheck: schema, fake tensor and autograd registration are consistent."""
    x = torch.randn(2, 5, 3, 4, requires_grad=True)
    hw = tuple(size or (3, 4))
    t = torch.randint(0, 5, (2, *hw), dtype=torch.uint8)
    w = torch.rand(2, *hw)
    ops = torch.ops.semiseg_fast
    rs = (size, True)  # the resampling arguments of the ops that take them
    cases = {
        "pixel_stats": (ops.pixel_stats.default, (x, 1.0, *rs, "cpp")),
        "pseudo_label_cross_entropy": (
            ops.pseudo_label_cross_entropy.default,
            (x, t, w, 255, 1, 0, 0.0, None, True, False, *rs, "cpp"),
        ),
        "select_rank": (ops.select_rank.default, (torch.rand(2, 3, 4), 5, "cpp")),
        "infonce": (
            ops.infonce_loss.default,
            (torch.randn(3, 4, 6, requires_grad=True), torch.randn(3, 6), torch.randn(9, 6))
            + (torch.randint(0, 9, (3, 4, 5)), torch.rand(3), 0.5, True, "cpp"),
        ),
        "pixel_rows": (ops.pixel_rows.default, (x.detach().requires_grad_(), torch.randint(0, 24, (3, 4)))),
        "newest_negatives": (
            ops.newest_negatives.default,
            (torch.rand(2, 5, 3, 4), torch.randint(0, 6, (24,)), torch.rand(24) < 0.5, torch.tensor([True, False]))
            + (1, 4, 1.0, 3, False, "cpp"),
        ),
        "fixmatch_loss": (
            ops.fixmatch_loss.default,
            (x, torch.randn(2, 5, 3, 4), 0.5, None, 255, 0, 0.0, True, *rs, "cpp"),
        ),
        "pseudoseg_loss": (
            ops.pseudoseg_loss.default,
            (
                x,
                torch.randn(2, 5, 3, 4),
                torch.randn(2, 5, 3, 4),
                torch.rand(2, *hw) < 0.2,
                torch.tensor(0.7),
                0.5,
                0.5,
                0.0,
                True,
                0,
                0.0,
                True,
                *rs,
                "cpp",
            ),
        ),
    }
    fn, args = cases[op]
    torch.library.opcheck(fn, args, test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic"))


def test_backend_choice_is_marked_constant_like_the_public_decorator():
    """_backend marks _resolve_kind by hand (the decorator would import torch._dynamo at start-up):
    the flag must be the one torch.compiler.assume_constant_result sets."""
    from semiseg_fast import _backend

    def probe():
        return None

    assert vars(torch.compiler.assume_constant_result(probe)) == {"_dynamo_marked_constant": True}
    assert _backend._resolve_kind._dynamo_marked_constant is True


def test_import_does_not_load_dynamo():
    """Importing the library and the training loop must not cost every process torch._dynamo's import."""
    import subprocess
    import sys

    code = "import sys, semiseg_fast, semiseg_fast.train.loop; print('torch._dynamo' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
