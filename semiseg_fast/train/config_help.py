"""One line of help for every config key, by dotted name: what it does, what it accepts, and for a
default chosen by an experiment the table in docs/experiments.md that chose it. docs/training.md
is generated from these (``make docs``); a test checks that every key has one."""

from __future__ import annotations

EXPERIMENTS = "docs/experiments.md"

SECTIONS = {
    "": "Run",
    "data": "Data",
    "model": "Model",
    "optim": "Optimizer",
    "train": "Training",
    "semi": "Semi-supervised methods",
    "eval": "Evaluation",
}

HELP: dict[str, str] = {
    "method": "supervised | fixmatch | u2pl | pseudoseg | selftrain",
    "seed": "seeds the weights, the data order and every augmentation (integer >= 0)",
    "deterministic": (
        "deterministic algorithms only: a rerun, or a killed and resumed run, ends with bit-identical weights"
    ),
    "device": "auto | cpu | cuda (auto: cuda when a GPU is present)",
    "out_dir": "the run folder; may hold {method} and {seed}",
    "data.name": "synthetic (the embedded dataset, generated from data.* settings) | voc | cityscapes",
    "data.root": "folder of a voc / cityscapes dataset with the split files",
    "data.num_classes": "number of classes of a folder dataset (integer >= 2); the synthetic set knows its own",
    "data.labeled_split": "split file of the labeled images, under data.root",
    "data.unlabeled_split": "split file of the unlabeled images, under data.root",
    "data.val_split": "split file of the validation images, under data.root",
    "data.synthetic_train": "images in the synthetic training pool",
    "data.synthetic_val": "synthetic validation images",
    "data.image_size": "side of a synthetic image, in pixels (>= 8)",
    "data.labeled_fraction": "synthetic only: the labeled share of the pool, in (0, 1]; the rest is unlabeled",
    "data.crop_size": "side of the training crops, in pixels",
    "data.scale_range": "[min, max] random rescale of a training image before cropping",
    "data.batch_size": "labeled images per step and process",
    "data.unlabeled_batch_size": "unlabeled (or pseudo-labeled) images per step and process",
    "data.num_workers": "data worker processes per data stream (0: augment on the training thread)",
    "data.ignore_index": "label value of pixels without a label, in [0, 255]",
    "model.name": "deeplabv3plus, or package.module:Class of your own, called with num_classes= and the kwargs",
    "model.kwargs": "keyword arguments of the model; model.kwargs.width=16 sets one and keeps the others",
    "optim.name": "adamw (fused step) | sgd (Nesterov)",
    "optim.lr": (
        "peak learning rate; 0.008 was the best found on the embedded dataset "
        f"({EXPERIMENTS}#the-learning-rate-optimlr-and-trainfast2xlow_res_lr)"
    ),
    "optim.momentum": "SGD's momentum, in [0, 1); adamw ignores it",
    "optim.weight_decay": "decoupled weight decay (adamw) or L2 penalty (sgd), >= 0",
    "optim.poly_power": "exponent of the poly decay after the warm-up",
    "optim.warmup_steps": "linear warm-up, in batches of the configured size",
    "train.epochs": (
        "passes over the unlabeled pool (the labeled one for supervised folder runs): the budget of every method"
    ),
    "train.eval_every": "evaluate every this many optimizer steps, and at the end",
    "train.checkpoint_every": "write last.pt every this many optimizer steps, and at the end",
    "train.channels_last": "channels_last model and inputs",
    "train.amp": (
        "auto | bf16 | fp16 | off; auto: bf16 on GPUs and CPUs with native bf16, fp16 on older GPUs, off on "
        f"other CPUs ({EXPERIMENTS}#autocast-on-cpus-without-native-bf16-trainampauto)"
    ),
    "train.grid_images": "validation images in predictions.png and the TensorBoard grid (0: none)",
    "train.progress": "show the progress bar (a plain line every 10 s when the output is not a terminal)",
    "train.tensorboard": (
        "also write a TensorBoard log of the scalars and prediction grids into the run folder (needs the "
        "tensorboard package)"
    ),
    "train.schedule": "standard | fast2x (most of the budget on reduced crops, see the train.fast2x keys)",
    "train.fast2x.low_res_fraction": (
        "share of the budget's images on reduced crops, in [0, 1] "
        f"({EXPERIMENTS}#fast2x-over-eight-seeds-trainfast2xlow_res_fraction)"
    ),
    "train.fast2x.low_res_scale": "side of the reduced crops as a fraction of data.crop_size, in (0, 1]",
    "train.fast2x.low_res_batch": "batches per reduced step: the reduced phase sees the same images in fewer steps",
    "train.fast2x.low_res_lr": (
        "the reduced phase's rate, held, as a factor of optim.lr; null follows the run's poly curve "
        f"({EXPERIMENTS}#the-learning-rate-optimlr-and-trainfast2xlow_res_lr)"
    ),
    "train.fast2x.full_res_lr": (
        "the full-size phase restarts at this factor of optim.lr, in (0, 1], and decays to 0; null continues "
        "the run's curve"
    ),
    "semi.teacher": "ema | shared (the student itself, without gradients)",
    "semi.ema_decay": "decay of the EMA teacher per batch, in [0, 1]",
    "semi.threshold": "fixmatch: confidence a pseudo-label needs, in [0, 1]",
    "semi.unsupervised_weight": "weight of the unsupervised loss",
    "semi.strong_color": "colour jitter, grayscale and blur on the strong view",
    "semi.cutmix_p": "probability of CutMix on the strong view (fixmatch, u2pl)",
    "semi.u2pl.drop_percent": "initial entropy percentile above which pseudo-labels are dropped, in [0, 100]",
    "semi.u2pl.contrastive": "train U2PL's contrastive term",
    "semi.u2pl.contrastive_weight": "weight of the contrastive term",
    "semi.u2pl.sup_only_epochs": "epochs of labeled-only training before the unsupervised terms",
    "semi.u2pl.low_rank": "negatives of an unreliable pixel: classes ranked from low_rank ...",
    "semi.u2pl.high_rank": "... up to high_rank (exclusive; > low_rank)",
    "semi.u2pl.num_queries": "anchor pixels per class in the contrastive term",
    "semi.u2pl.num_negatives": "negatives per anchor",
    "semi.u2pl.bank_capacity": "features kept per class in the memory bank",
    "semi.selftrain.pseudo_dir": (
        "folder written by python -m semiseg_fast.pseudo_label (selftrain needs it; --pseudo-dir)"
    ),
    "semi.selftrain.threshold": "pseudo-labels under this confidence are ignored, in [0, 1]",
    "semi.selftrain.soft": "soft cross-entropy against the stored top-k probabilities (pseudo_label --topk)",
    "semi.selftrain.class_balanced": "centre each crop on a pixel of a class drawn uniformly from those in the image",
    "semi.pseudoseg.gamma": (
        "the decoder's share of the fused target, in [0, 1] (PseudoSeg: 0.5; "
        f"{EXPERIMENTS}#pseudosegs-fusion-weight-semipseudoseggamma)"
    ),
    "semi.pseudoseg.temperature": "sharpening temperature of the fused target (> 0)",
    "semi.pseudoseg.threshold": "drop pixels whose fused target's maximum is under this, in [0, 1] (0: keep all)",
    "semi.pseudoseg.soft": "soft cross-entropy against the fused target (false: hard, against its argmax)",
    "semi.pseudoseg.cutout_size": (
        "side of the Cutout square on the strong view, as a fraction of the crop; ignored by the loss"
    ),
    "semi.pseudoseg.sgc_weight": "weight of the SGC head's cross-entropy on labeled images",
    "semi.pseudoseg.classifier_weight": "weight of the image classifier's BCE on labeled images",
    "semi.pseudoseg.classifier_backprop": (
        "let the classifier's BCE train the backbone (PseudoSeg's code: yes; "
        f"{EXPERIMENTS}#pseudosegs-classifier-semipseudosegclassifier_backprop)"
    ),
    "eval.mode": "whole (the full image at once) | slide (windows)",
    "eval.window": "slide: window side in pixels",
    "eval.stride": "slide: stride in pixels, 0 < stride <= eval.window",
    "eval.batch_size": "images (or windows) per forward pass",
}
