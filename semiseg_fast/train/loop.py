"""The training loop: builds everything from a config, trains, evaluates, checkpoints."""

from __future__ import annotations

import copy
import math
import os
import sys
import time
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..data import DataError, normalize
from ..utils.atomic import atomic_open, remove_temporaries
from . import figures, methods, pseudo_quality
from .batches import mix_seed
from .checkpoint import LAST, CheckpointError, checkpoint_path, load_checkpoint, save_atomic
from .config import check_same_folder, config_from_checkpoint, describe_conflicts, dump, resume_conflicts, run_folder
from .data import build_datasets, step_loader
from .distributed import all_reduce_sum, average_gradients, barrier, init_world, shutdown
from .evaluate import AveragedNetworks, evaluate, format_iou_table, predict_labels
from .methods import StepContext, ema_update
from .metrics_csv import MetricsCSV, read_csv
from .progress import ProgressBar
from .run_folder import check_writable, in_folder, write_failure
from .run_model import build_run_model
from .schedule import from_config as schedule_from_config
from .schedule import rampup_factor
from .start import base_lr, head_lr_mult
from .tensorboard_log import INSTALL_HINT, TensorBoardLog
from .tensorboard_log import available as tensorboard_available

CSV_FIELDS = ["step", "epoch", "lr", "loss", "loss_sup", "loss_unsup", "mask_ratio", "img_per_s", "miou"]
CSV_FIELDS += pseudo_quality.COLUMNS  # at evaluations, where the unlabeled images have ground truth
CSV_FIELDS += ["miou_network_2", "miou_averaged"]  # two-network methods: the second, and their mean softmax
LOG_EVERY = 10


def resolve_amp(setting: Any, device: torch.device) -> torch.dtype | None:
    """auto: bf16 where the hardware has it (CUDA with bf16, CPUs with native bf16 such as
    AVX512-BF16/AMX), fp16 on older CUDA GPUs, otherwise off: on CPUs without native bf16, autocast
    runs convolutions through conversions and trains several times slower than fp32
    (docs/experiments.md#autocast-on-cpus-without-native-bf16-trainampauto)."""
    if setting in ("off", False):
        return None
    if setting == "fp16":
        if device.type != "cuda":
            raise ValueError("config: train.amp=fp16 expected a CUDA device; use bf16 or off on CPU")
        return torch.float16
    if setting == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if torch.ops.mkldnn._is_mkldnn_bf16_supported() else None


def param_groups(model: nn.Module, mult: float) -> list[dict[str, Any]]:
    """The encoder's parameters at the schedule's rate, everything else at ``mult`` times it
    (``lr_mult``, read at every step). A model without ``.encoder`` is one group: a multiplier
    other than 1 then has nothing to tell apart, which is an error."""
    encoder = getattr(model, "encoder", None)
    if not isinstance(encoder, nn.Module):
        if mult != 1.0:
            raise ValueError(f"optim.head_lr_mult: {mult} needs a model with an .encoder module; set it to 1")
        return [{"params": list(model.parameters()), "lr_mult": 1.0}]
    own = {id(p) for p in encoder.parameters()}
    rest = [p for p in model.parameters() if id(p) not in own]
    return [{"params": list(encoder.parameters()), "lr_mult": 1.0}, {"params": rest, "lr_mult": mult}]


def set_determinism(config: dict[str, Any]) -> None:
    torch.manual_seed(config["seed"])
    if config["deterministic"]:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True


class Trainer:
    def __init__(self, config: dict[str, Any], resume: str | None = None):
        self.config = config
        self.world = init_world(config["device"])
        set_determinism(config)
        dc, tc, sc = config["data"], config["train"], config["semi"]
        method_cls = methods.get(config["method"])
        self.out_dir = config["out_dir"].format(method=method_cls.name, seed=config["seed"])
        check_writable(self.out_dir)  # before the data and the model: a bad folder is a setup error
        # the synthetic pool's unlabeled part also sets the epoch length of a method without
        # unlabeled images, so every method gets the same number of steps for the same config
        self.data = build_datasets(dc, with_unlabeled=method_cls.uses_unlabeled or dc["name"] == "synthetic")
        if method_cls.uses_unlabeled and self.data.unlabeled is None:
            raise ValueError(f"config: method {method_cls.name} needs unlabeled images; data.labeled_fraction is 1")
        self.method = method_cls(config, self.data.num_classes)
        pool = self.data.unlabeled if self.data.unlabeled is not None else self.data.labeled
        batch = dc["unlabeled_batch_size"] if self.data.unlabeled is not None else dc["batch_size"]
        self.steps_per_epoch = math.ceil(len(pool) / (batch * self.world.size))
        budget = tc["steps"] or tc["epochs"] * self.steps_per_epoch
        self.num_epochs = math.ceil(budget / self.steps_per_epoch)
        self.schedule = schedule_from_config(config, budget)
        self.num_steps = self.schedule.num_steps  # optimizer steps: fewer than the budget's when some take 2+ batches
        self.amp_dtype = resolve_amp(tc["amp"], self.world.device)
        self.memory_format = torch.channels_last if tc["channels_last"] else torch.contiguous_format

        self.model = build_run_model(config, self.data.num_classes, load_weights=not resume)
        self.model.to(self.world.device, memory_format=self.memory_format)
        if method_cls.networks not in (1, 2):
            raise ValueError(f"method {method_cls.name}: Method.networks expected 1 or 2, got {method_cls.networks!r}")
        self.peer: nn.Module | None = None  # a two-network method's second network
        if method_cls.networks == 2:  # built after the first: its head gets the next random draws
            self.peer = build_run_model(config, self.data.num_classes, load_weights=not resume)
            self.peer.to(self.world.device, memory_format=self.memory_format)
        self.teacher: nn.Module | None = None
        self.peer_teacher: nn.Module | None = None  # a two-network method's second EMA teacher
        if self.method.uses_teacher and sc["teacher"] == "ema":  # an instance's setting may differ from its class's
            self.teacher = copy.deepcopy(self.model).requires_grad_(False)
            if self.peer is not None:
                self.peer_teacher = copy.deepcopy(self.peer).requires_grad_(False)
        self.method_state = self.method.state()
        if self.method_state is not None:
            self.method_state.to(self.world.device)
        self.state_optimizer = None if self.method_state is None else self.method.state_optimizer(self.method_state)
        o = config["optim"]
        groups = param_groups(self.model, head_lr_mult(config))
        if self.peer is not None:  # one optimizer, the same settings for each network: two optimizers' steps
            groups += param_groups(self.peer, head_lr_mult(config))
        if o["name"] == "sgd":  # not fused: that one fails on a parameter whose first gradient comes late
            self.optimizer = torch.optim.SGD(
                groups,
                lr=base_lr(config),
                momentum=o["momentum"],
                weight_decay=o["weight_decay"],
                nesterov=True,
            )
        else:
            # fused: one kernel over all parameters instead of ~10 ops per tensor (8 -> 2 ms a step
            # on this project's CPUs). It rounds otherwise than the per-tensor loop; a checkpoint
            # written by that loop resumes with it (load_state_dict restores `fused`)
            self.optimizer = torch.optim.AdamW(groups, lr=base_lr(config), weight_decay=o["weight_decay"], fused=True)
        self.scaler = torch.amp.GradScaler(self.world.device.type, enabled=self.amp_dtype == torch.float16)
        self.step, self.best_miou = 0, -1.0
        self.resumed_log_sums: torch.Tensor | None = None
        if tc["tensorboard"] and not tensorboard_available():  # before training, not at its end
            raise ValueError(f"config: train.tensorboard=true needs the tensorboard package: {INSTALL_HINT}")
        self.unlabeled_view = self._unlabeled_view()  # before training: a bad pseudo_dir is a setup error
        self.pseudo_sample = self._pseudo_label_sample()
        if resume:
            self._load(checkpoint_path(resume))
        self.student: nn.Module = self.model
        self.student_peer: nn.Module | None = self.peer
        if self.world.size > 1:
            ids = [self.world.device.index] if self.world.device.type == "cuda" else None
            self.student = DistributedDataParallel(self.model, device_ids=ids)
            if self.peer is not None:
                self.student_peer = DistributedDataParallel(self.peer, device_ids=ids)

    # -- checkpoints ---------------------------------------------------------------------------
    def _state(self, miou: float, log_sums: torch.Tensor | None = None) -> dict[str, Any]:
        """``log_sums``: the metrics summed over every rank since the last logged row, so that a
        resumed run's first row covers its whole interval."""
        return {
            "config": self.config,
            "step": self.step,
            "best_miou": self.best_miou,
            "miou": miou,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "teacher": self.teacher.state_dict() if self.teacher is not None else None,
            "peer": self.peer.state_dict() if self.peer is not None else None,
            "peer_teacher": self.peer_teacher.state_dict() if self.peer_teacher is not None else None,
            "criterion": self.method_state.state_dict() if self.method_state is not None else None,
            "state_optimizer": self.state_optimizer.state_dict() if self.state_optimizer is not None else None,
            "class_names": self.data.class_names,
            "num_classes": self.data.num_classes,
            "log_sums": log_sums.cpu() if log_sums is not None else None,
        }

    def _load(self, path: str) -> None:
        """Continues the run of checkpoint ``path``: only with its config (up to the keys of
        config.resume_adjustable_keys()) and in its folder, else the run would silently change."""
        state = load_checkpoint(path, map_location=self.world.device)
        saved = config_from_checkpoint(state)
        conflicts = resume_conflicts(saved, self.config)
        if conflicts:
            raise ValueError(describe_conflicts(path, saved, self.config, conflicts))
        check_same_folder(self.out_dir, run_folder(path))
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scaler.load_state_dict(state["scaler"])
            if self.teacher is not None:
                self.teacher.load_state_dict(state["teacher"])
            if self.peer is not None:
                self.peer.load_state_dict(state["peer"])
            if self.peer_teacher is not None:
                self.peer_teacher.load_state_dict(state["peer_teacher"])
            if self.method_state is not None:
                self.method_state.load_state_dict(state["criterion"])
            if self.state_optimizer is not None:
                self.state_optimizer.load_state_dict(state["state_optimizer"])
            self.step, self.best_miou = int(state["step"]), float(state["best_miou"])
            self.resumed_log_sums = state.get("log_sums")  # absent in checkpoints older than it
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as e:
            raise CheckpointError(f"--resume: {path!r} does not hold this run's training state: {e}") from e

    @property
    def eval_model(self) -> nn.Module:
        return self.teacher if self.teacher is not None else self.model

    # -- the loop ------------------------------------------------------------------------------
    def _unlabeled_view(self):
        return self.method.unlabeled_view(self.data) if self.method.uses_unlabeled else None

    def _loaders(self):
        dc, w = self.config["data"], self.world
        seed, start, stop = self.config["seed"], self.step, self.num_steps
        schedule = self.schedule if self.schedule.low_res_steps else None
        loader = lambda view, batch, stream: step_loader(
            view, batch, seed, stream, start, stop, w.rank, w.size, dc["num_workers"], schedule
        )
        labeled = loader(self.method.labeled_view(self.data), dc["batch_size"], 0)
        if self.unlabeled_view is None:
            return zip(labeled, [None] * (stop - start))
        return zip(labeled, loader(self.unlabeled_view, dc["unlabeled_batch_size"], 1))

    def _to_device(self, batch):
        if batch is None:
            return None
        dev, fmt = self.world.device, self.memory_format
        out = []
        for t in batch:
            if t.dtype == torch.uint8 and t.dim() == 4:  # images
                t = normalize(t).to(dev, non_blocking=True).contiguous(memory_format=fmt)
            else:
                t = t.to(dev, non_blocking=True)
            out.append(t)
        return out

    def train(self) -> dict[str, Any]:
        try:
            return self._train()
        except OSError as e:  # disk full, a folder made read-only: one line naming the file
            if not in_folder(e.filename, self.out_dir):
                raise
            raise write_failure(e, os.path.join(self.out_dir, LAST)) from e

    def _train(self) -> dict[str, Any]:
        cfg, tc, w = self.config, self.config["train"], self.world
        if w.is_main:
            os.makedirs(self.out_dir, exist_ok=True)
            for path in remove_temporaries(self.out_dir):
                print(f"removed {path!r}, left by an interrupted write", file=sys.stderr)
            with atomic_open(os.path.join(self.out_dir, "config.yaml"), "w") as f:
                f.write(dump(cfg))
            print(dump(cfg), file=sys.stderr)
            print(
                f"{self.method.name}: {len(self.data.labeled)} labeled, "
                f"{len(self.data.unlabeled) if self.data.unlabeled is not None else 0} unlabeled images, "
                f"{self.num_steps} steps ({self.num_epochs} epochs of {self.steps_per_epoch} batches), {w.size} "
                f"process(es), device {w.device}, "
                f"autocast {self.amp_dtype or 'off'}, channels_last {tc['channels_last']}",
                file=sys.stderr,
            )
            if self.schedule.low_res_steps:
                print(
                    "schedule: "
                    + ", ".join(
                        f"steps {p['start']}-{p['stop'] - 1} on {p['crop']}-pixel crops, {p['batch_scale']}x batch"
                        for p in self.schedule.phases()
                    ),
                    file=sys.stderr,
                )
        csv = self._metrics_csv() if w.is_main else None
        board = TensorBoardLog(self.out_dir, self.step) if w.is_main and tc["tensorboard"] else None
        sums = torch.zeros(5, device=w.device)  # loss, sup, unsup, mask ratio, steps
        if self.resumed_log_sums is not None and w.is_main:  # every rank's, reduced when saved
            sums += self.resumed_log_sums.to(w.device)
        images_per_step = (
            self.config["data"]["batch_size"]
            + (self.config["data"]["unlabeled_batch_size"] if self.method.uses_unlabeled else 0)
        ) * w.size  # at batch scale 1
        images_since_log = 0
        last_result, others = None, {}
        bar = ProgressBar(self.num_steps - self.step, desc=self.method.name, enabled=w.is_main and tc["progress"])
        t_log = time.perf_counter()
        for labeled, unlabeled in self._loaders():
            step = self.step
            lr = self.schedule.lr(step)
            for group in self.optimizer.param_groups:
                group["lr"] = lr * group.get("lr_mult", 1.0)
            torch.manual_seed(mix_seed(cfg["seed"], step, w.rank, 7))
            gen = torch.Generator(w.device).manual_seed(mix_seed(cfg["seed"], step, w.rank, 11))
            host_gen = None if gen.device.type == "cpu" else torch.Generator().manual_seed(gen.initial_seed())
            progress, scale = self.schedule.progress(step), self.schedule.batch_scale(step)
            ctx = StepContext(
                self.student,
                self.eval_model,
                cfg["semi"],
                cfg["data"]["ignore_index"],
                self._epoch(step),
                gen,
                self.data.num_classes,
                rampup_factor(progress / self.schedule.total_steps, cfg["semi"]["rampup"]),
                self.student_peer,
                host_gen,
                self.peer_teacher,
            )
            with torch.autocast(
                w.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None
            ):
                out = self.method.step(ctx, self._to_device(labeled), self._to_device(unlabeled))
            self.optimizer.zero_grad(set_to_none=True)
            if self.state_optimizer is not None:
                self.state_optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(out.loss if out.state_loss is None else out.loss + out.state_loss).backward()
            if self.state_optimizer is not None:
                average_gradients([p for g in self.state_optimizer.param_groups for p in g["params"]])
                self.scaler.step(self.state_optimizer)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            if self.teacher is not None:
                # a step of k batches counts as k: the teacher averages over the same number of images
                decay = min(1.0 - 1.0 / (step + 1), cfg["semi"]["ema_decay"] ** scale)
                ema_update(self.teacher, self.model, decay)
                if self.peer_teacher is not None:
                    ema_update(self.peer_teacher, self.peer, decay)
            sums += torch.stack(
                [
                    out.loss.detach().float(),
                    out.supervised.float(),
                    out.unsupervised.float(),
                    out.mask_ratio.float().to(w.device),
                    torch.tensor(1.0, device=w.device),
                ]
            )
            self.step = step + 1
            last = self.step == self.num_steps
            images_since_log += scale * images_per_step
            bar.update(1, images=scale * images_per_step)
            if self.step % LOG_EVERY == 0 or last or self.step % tc["eval_every"] == 0:
                totals = all_reduce_sum(sums.clone()).tolist()
                n = totals[4]
                elapsed = time.perf_counter() - t_log
                row = {
                    "step": self.step,
                    "epoch": round((progress + scale) / self.steps_per_epoch, 3),
                    "lr": lr,
                    "loss": totals[0] / n,
                    "loss_sup": totals[1] / n,
                    "loss_unsup": totals[2] / n,
                    "mask_ratio": totals[3] / n,
                    "img_per_s": images_since_log / elapsed,
                    "miou": "",
                    **dict.fromkeys(pseudo_quality.COLUMNS, ""),
                }
                bar.set_metrics(loss=row["loss"], mask=row["mask_ratio"])
                sums.zero_()
                images_since_log = 0
                if self.step % tc["eval_every"] == 0 or last:
                    last_result = self._evaluate()
                    row["miou"] = last_result.miou
                    others = self._evaluate_peer()
                    row.update(others)
                    quality = self._measure_pseudo_labels()
                    if quality is not None:
                        row.update(quality.row())
                    if w.is_main:
                        bar.write(
                            f"step {self.step}: mIoU {100 * last_result.miou:.2f}"
                            + "".join(f", {k[5:].replace('_', ' ')} {100 * v:.2f}" for k, v in others.items())
                            + (f"; {quality.summary()}" if quality is not None else "")
                        )
                    if board is not None and (grid := self._prediction_grid()) is not None:
                        board.image(
                            "val/predictions", figures.prediction_grid_array(*grid, self.data.num_classes), self.step
                        )
                    if last_result.miou > self.best_miou:
                        self.best_miou = last_result.miou
                        if w.is_main:
                            save_atomic(self._state(last_result.miou), os.path.join(self.out_dir, "best.pt"))
                if csv is not None:
                    csv.write(row)
                if board is not None:
                    board.scalars(row, self.step)
                t_log = time.perf_counter()
            if self.step % tc["checkpoint_every"] == 0 or last:
                pending = all_reduce_sum(sums.clone())  # every rank: a collective at checkpoints only
                if w.is_main:
                    save_atomic(
                        self._state(last_result.miou if last_result else float("nan"), pending),
                        os.path.join(self.out_dir, LAST),
                        keep_previous=True,
                    )
        bar.close()
        if board is not None:
            board.close()
        if last_result is None:  # resumed at the end: nothing left to train
            last_result, others = self._evaluate(), self._evaluate_peer()
        if w.is_main:
            self._write_figures()
            print(format_iou_table(last_result, self.data.class_names))
        barrier()  # no process tears its process group down while rank 0 still writes
        return {
            "miou": last_result.miou,
            "per_class": last_result.per_class.tolist(),
            "out_dir": self.out_dir,
            "best_miou": self.best_miou,
            "steps": self.step,
            **others,  # miou_network_2, miou_averaged: two-network methods
        }

    def _metrics_csv(self) -> MetricsCSV:
        path = os.path.join(self.out_dir, "metrics.csv")
        if self.step == 0 and os.path.exists(path):
            os.unlink(path)  # a fresh run in a used folder: the old run's rows are not this run's
        csv = MetricsCSV(path, CSV_FIELDS)
        if self.step > 0:
            csv.truncate_after(self.step)  # rows a killed run logged after its last checkpoint
        return csv

    def _evaluate_peer(self) -> dict[str, float]:
        """A two-network run's other figures: the second network's mIoU and their averaged prediction's."""
        if self.peer is None:
            return {}
        second = self.peer_teacher if self.peer_teacher is not None else self.peer  # as eval_model picks the first
        both = AveragedNetworks(self.eval_model, second)
        return {"miou_network_2": self._evaluate(second).miou, "miou_averaged": self._evaluate(both).miou}

    def _evaluate(self, model: nn.Module | None = None):
        ec, w = self.config["eval"], self.world
        return evaluate(
            model if model is not None else self.eval_model,
            self.data.val,
            self.data.num_classes,
            w.device,
            ec["mode"],
            ec["window"],
            ec["stride"],
            ec["batch_size"],
            self.config["data"]["ignore_index"],
            self.config["train"]["channels_last"],
            self.amp_dtype,
            w.rank,
            w.size,
        )

    def _epoch(self, step: int) -> int:
        """The 0-based epoch that optimizer step ``step`` trains in."""
        return min(self.schedule.progress(step) // self.steps_per_epoch, self.num_epochs - 1)

    def _pseudo_label_sample(self) -> pseudo_quality.TruthSample | None:
        """The unlabeled images whose pseudo-labels each evaluation measures, or None: off, a method
        without pseudo-labels, or no ground truth (said once)."""
        count, unlabeled = self.config["eval"]["pseudo_images"], self.data.unlabeled
        if count == 0 or unlabeled is None or not pseudo_quality.has_pseudo_labels(self.method):
            return None
        try:
            return pseudo_quality.truth_sample(unlabeled, count, self.data.num_classes)
        except (FileNotFoundError, DataError) as e:
            if self.world.is_main:
                print(
                    f"pseudo-label quality: not measured, the unlabeled images lack ground truth: {e}", file=sys.stderr
                )
            return None

    def _measure_pseudo_labels(self) -> pseudo_quality.PseudoLabelQuality | None:
        if self.pseudo_sample is None:
            return None
        ec, w = self.config["eval"], self.world
        return pseudo_quality.measure(
            self.method,
            self.eval_model,
            self.pseudo_sample,
            self._epoch(max(self.step - 1, 0)),  # the epoch of the step just taken
            self.data.num_classes,
            w.device,
            ec["batch_size"],
            self.config["data"]["ignore_index"],
            self.config["train"]["channels_last"],
            self.amp_dtype,
            w.rank,
            w.size,
        )

    def _prediction_grid(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """(images, labels, predictions) of the first ``train.grid_images`` validation images,
        or None when that is 0 (only the first when their sizes differ)."""
        n = min(self.config["train"]["grid_images"], len(self.data.val))
        if n == 0:
            return None
        samples = [self.data.val[i] for i in range(n)]
        if not all(s[0].shape == samples[0][0].shape for s in samples):
            samples = samples[:1]
        images = torch.stack([s[0] for s in samples])
        labels = torch.stack([s[1] for s in samples])
        ec, model = self.config["eval"], self.eval_model
        was_training = model.training
        preds = predict_labels(
            model.eval(),
            images,
            self.world.device,
            ec["mode"],
            ec["window"],
            ec["stride"],
            self.config["train"]["channels_last"],
            self.amp_dtype,
        ).cpu()
        model.train(was_training)
        return images, labels, preds

    def _write_figures(self) -> None:
        grid = self._prediction_grid()
        if grid is not None:
            figures.save_prediction_grid(os.path.join(self.out_dir, "predictions.png"), *grid, self.data.num_classes)
        rows = read_csv(os.path.join(self.out_dir, "metrics.csv"))
        figures.save_curves(os.path.join(self.out_dir, "curves.png"), rows)


def train(config: dict[str, Any], resume: str | None = None) -> dict[str, Any]:
    """Train with a resolved config (see :func:`semiseg_fast.train.load_config`); returns the
    final validation mIoU, per-class IoU and the run folder."""
    try:
        return Trainer(config, resume).train()
    finally:
        shutdown()
