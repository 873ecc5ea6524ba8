"""train.fused_upsample: the methods hand the decoder's logits to the fused losses with size= instead
of upsampling them first. In fp32 the training run computes the same losses either way.

Two runs of the same config part after a few steps whatever the implementation: a 1-ulp change of
the initial weights moves the tiny run's loss by 1e-3 within ten steps (Adam on near-zero
gradients), so the comparison is made along one run. Each of the first 50 steps of the real loop
(train.fused_upsample=false driving the weights) is also computed with the setting on, from the
same weights, batch, BatchNorm statistics, memory bank and random draws, and the two losses and
their gradients must agree."""

import copy

import pytest
import torch

import semiseg_fast as sf
from semiseg_fast.train.config import load_config
from semiseg_fast.train.loop import Trainer
from semiseg_fast.train.methods.base import Upsampling

STEPS = 50
GRAD_STEPS = 3  # the steps whose gradients are compared too
SMALL = [
    "train.amp=off",
    "train.progress=false",
    "train.eval_every=1000",
    "train.checkpoint_every=1000",
    "train.grid_images=0",
    "eval.pseudo_images=0",
    "data.synthetic_train=24",
    "data.synthetic_val=2",
    "data.image_size=24",
    "data.crop_size=24",
    "data.batch_size=2",
    "data.unlabeled_batch_size=2",
    "data.labeled_fraction=0.25",
    "model.kwargs.width=8",
    "model.kwargs.rep_dim=16",
    "optim.warmup_steps=5",
]
# thresholds that let the unsupervised terms train from the first steps; u2pl counts epochs
METHODS = {
    "fixmatch": [f"train.steps={STEPS}", "semi.fixmatch.threshold=0.5"],
    "unimatch": [f"train.steps={STEPS}", "semi.unimatch.threshold=0.5"],
    "pseudoseg": [f"train.steps={STEPS}"],
    "supervised": [f"train.steps={STEPS}", "train.supervised_loss=ohem", "train.ohem.min_kept=200"],
    # 9 steps an epoch; the unsupervised terms from the second (semi.u2pl.sup_only_epochs=1, the
    # default): at initialisation the teacher's near-uniform predictions have many tied entropies,
    # and a 1-ulp difference moves a pixel across the exact entropy percentile (1e-3 of the loss)
    "u2pl": [
        "train.epochs=6",
        "semi.u2pl.num_queries=8",
        "semi.u2pl.num_negatives=4",
        "semi.u2pl.bank_capacity=64",
    ],
}


class _Stop(Exception):
    pass


@pytest.fixture
def one_thread():
    """One thread, as a CI worker slot (tests/train/helpers.py): two threads of tiny kernels on a busy
    machine spend most of their time waiting for each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _paired_losses(method, tmp_path, steps=STEPS):
    """[(loss with fused_upsample on, loss off)] of the first ``steps`` steps of a run whose weights
    the off path trains, and max |grad on - grad off| / max |grad off| of the first GRAD_STEPS."""
    config = load_config(
        None, [f"method={method}", *SMALL, *METHODS[method], f"out_dir={tmp_path}", "train.fused_upsample=false"]
    )
    trainer = Trainer(config)
    step, state = trainer.method.step, trainer.method.state()
    params = [p for p in trainer.model.parameters() if p.requires_grad]
    pairs = []

    def both(ctx, labeled, unlabeled):
        saved = (
            copy.deepcopy(trainer.model.state_dict()),
            copy.deepcopy(state.state_dict()) if state is not None else None,
            ctx.generator.get_state(),
            torch.get_rng_state(),
        )
        trainer.method.fused_upsample = True
        on = step(ctx, labeled, unlabeled)
        g_on = torch.autograd.grad(on.loss, params, allow_unused=True) if len(pairs) < GRAD_STEPS else None
        trainer.model.load_state_dict(saved[0])  # the BatchNorm statistics of the pass
        if state is not None:
            state.load_state_dict(saved[1])  # the memory bank
        ctx.generator.set_state(saved[2])
        torch.set_rng_state(saved[3])
        trainer.method.fused_upsample = False
        off = step(ctx, labeled, unlabeled)
        g_off = None
        if g_on is not None:
            g_off = torch.autograd.grad(off.loss, params, retain_graph=True, allow_unused=True)
        pairs.append((on, off, g_on, g_off))
        if len(pairs) == steps:
            raise _Stop  # before the last step's update: all its losses are in
        return off

    trainer.method.step = both
    with pytest.raises(_Stop):
        trainer.train()
    out, grads = [], []
    for on, off, g_on, g_off in pairs:
        if g_on is not None:
            diff = max((a - b).abs().max().item() for a, b in zip(g_on, g_off) if b is not None)
            scale = max(b.abs().max().item() for b in g_off if b is not None)
            grads.append(diff / scale)
        out.append((on, off))
    return out, grads


@pytest.mark.parametrize("method", list(METHODS))
def test_fused_upsample_computes_the_interpolate_paths_losses(method, tmp_path, one_thread):
    """Each of the first 50 steps: the losses equal to 1e-5 relative; the first steps' gradients
    to 1e-4 of their largest entry."""
    pairs, grads = _paired_losses(method, tmp_path)
    assert len(pairs) == STEPS and len(grads) == GRAD_STEPS
    for on, off in pairs:
        assert torch.equal(on.mask_ratio, off.mask_ratio)
        torch.testing.assert_close(on.unsupervised, off.unsupervised, rtol=1e-5, atol=1e-7)
    rel = [abs(on.loss.item() - off.loss.item()) / abs(off.loss.item()) for on, off in pairs]
    assert max(rel) <= 1e-5, (max(rel), rel.index(max(rel)))
    assert max(grads) <= 1e-4, grads
    assert all(off.loss.item() > 0 for _, off in pairs)


def test_fused_upsample_is_on_by_default_and_upsampling_follows_it():
    config = load_config(None, [])
    assert config["train"]["fused_upsample"] is True
    x = torch.randn(2, 3, 6, 6)
    fused, plain = Upsampling((24, 24), True), Upsampling((24, 24), False)
    assert fused(x) is x and fused.kwargs == {"size": (24, 24), "align_corners": True}
    assert plain(x).shape == (2, 3, 24, 24) and plain.kwargs == {}
    a, b = fused.stats(x), plain.stats(x)
    assert torch.equal(a.label, b.label)
    torch.testing.assert_close(a.confidence, b.confidence)


@pytest.mark.parametrize("align_corners", [False, True])
def test_loss_modules_take_size_as_their_functions_do(align_corners):
    """The modules a step calls (and FixMatchLoss) pass size and align_corners to their ops."""
    g = torch.Generator().manual_seed(0)
    x, teacher = torch.randn(2, 4, 5, 6, generator=g), torch.randn(2, 4, 5, 6, generator=g) * 4
    target = torch.randint(0, 4, (2, 13, 17), generator=g)
    kw = dict(size=(13, 17), align_corners=align_corners)
    up = lambda t: torch.nn.functional.interpolate(t, mode="bilinear", **kw)
    pairs = [
        (sf.PseudoLabelCrossEntropy()(x, target, **kw), sf.PseudoLabelCrossEntropy()(up(x), target)),
        (sf.OhemCrossEntropy(0.5, 100)(x, target, **kw), sf.OhemCrossEntropy(0.5, 100)(up(x), target)),
        (sf.FixMatchLoss(0.5)(x, teacher, **kw), sf.FixMatchLoss(0.5)(up(x), up(teacher))),
    ]
    for fused, plain in pairs:
        torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-6)
