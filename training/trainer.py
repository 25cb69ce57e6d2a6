"""The training loop: optimisation, mixed precision, non-finite guard, validation,
checkpoints and exact resume, for one process or a torchrun/DDP job, for every task
(`training.tasks`: the vocoder, or the text-to-mel model with `task: acoustic`).

Steps count optimizer steps, skipped non-finite ones included, so the learning-rate
schedule and the data position are functions of the step alone.
"""
from __future__ import annotations

import contextlib
import math
import os
import random
import signal
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from training import distributed
from training.acoustic import AcousticTask
from training.config import ConfigError, OptimConfig, TrainConfig, check_against_model, dump_yaml
from training.data import Position
from training.distributed import DistributedContext
from training.logging_utils import MetricsWriter, log, setup_console
from training.state import (
    Progress,
    RngState,
    TrainingState,
    capture_rng,
    commit_checkpoint,
    read_state,
    remove_stale_staging,
    restore_rng,
    step_dirs,
    write_state,
)
from training.tasks import Task
from training.vocoder_task import VocoderTask
from vocoder.checkpoint import check_state_dict
from vocoder.errors import VocoderError

PRECISIONS = {"bf16": torch.bfloat16, "fp16": torch.float16}
TASKS: dict[str, type[Task]] = {"vocoder": VocoderTask, "acoustic": AcousticTask}


class TrainingError(VocoderError):
    """Training cannot go on (for example, it diverged); the last checkpoint is intact."""


def _differences(wanted: Any, found: Any) -> str:
    wanted, found = wanted.to_dict(), found.to_dict()
    return ", ".join(f"{k}: recipe {wanted[k]!r} vs checkpoint {found[k]!r}" for k in wanted if wanted[k] != found[k])


def load_init(config: TrainConfig, path: str) -> Any:
    """The `--init` checkpoint at `path`, of the kind `config.task` trains."""
    return TASKS[config.task].load_checkpoint(path)


def resolve_model(config: TrainConfig, init: Any | None) -> TrainConfig:
    """Fill in `model` and `mel`: from `init` (from `load_init`) when the recipe leaves them
    out (and they must match it when it does not), otherwise from the recipe or the defaults."""
    task = TASKS[config.task]
    model, mel = config.model, config.mel
    if init is not None:
        init_model = task.checkpoint_model(init)
        adaptations = task.init_adaptations(init_model, model) if model is not None else []
        for adaptation in adaptations:
            log.info("--init: the recipe's model differs from the checkpoint's: %s", adaptation)
        if model is not None and model != init_model and not adaptations:
            raise ConfigError(f"--init checkpoint's model config differs from the recipe "
                              f"({_differences(model, init_model)}); remove `model` from the recipe to take "
                              f"the checkpoint's")
        if mel is not None and mel != init.mel:
            raise ConfigError(f"--init checkpoint's mel config differs from the recipe "
                              f"({_differences(mel, init.mel)}); remove `mel` from the recipe to take the "
                              f"checkpoint's")
        model, mel = (model if adaptations else init_model), init.mel
    model = model or task.default_model()
    mel = mel or task.default_mel(model)
    resolved = replace(config, model=model, mel=mel)
    check_against_model(resolved)
    return resolved


def learning_rate(optim: OptimConfig, step: int, max_steps: int) -> float:
    """Learning rate of step `step` (0-based): linear warmup, then constant or cosine decay."""
    if step < optim.warmup_steps:
        return optim.lr * (step + 1) / optim.warmup_steps
    if optim.schedule == "constant":
        return optim.lr
    done = min(1.0, (step - optim.warmup_steps) / max(1, max_steps - optim.warmup_steps))
    return optim.lr * (optim.min_lr_ratio + (1 - optim.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * done)))


@dataclass
class RunResult:
    """How `Trainer.fit` ended: the last step, and whether it stopped early (signal or `stop_at`)."""

    step: int
    stopped: bool
    checkpoint: Path | None


class Trainer:
    """Builds everything from a resolved config and runs `fit`.

    `init`: weights to start from (fine-tuning); `resume`: a training checkpoint directory
    whose model, optimizer, RNG states and data position are restored exactly.
    """

    def __init__(self, config: TrainConfig, init: Any | None = None, resume: Path | None = None,
                 init_path: str | None = None) -> None:
        assert config.model is not None and config.mel is not None, "call resolve_model first"
        loop = config.train
        if loop.deterministic:
            # cuBLAS reads this when CUDA starts, so it must be set before the device is touched.
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        self.context: DistributedContext = distributed.setup(loop.device)
        setup_console(self.context.is_main)
        self.config, self.init_path = config, init_path
        self.run_dir = Path(config.out_dir)
        self.checkpoints = self.run_dir / "checkpoints"
        device = self.context.device
        if loop.threads:
            torch.set_num_threads(loop.threads)
        if loop.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        elif device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        self.amp_dtype = PRECISIONS.get(loop.precision) if device.type == "cuda" else None
        if loop.precision != "fp32" and device.type != "cuda":
            log.info("train.precision=%s applies on CUDA only; training in fp32 on %s", loop.precision, device)
        if loop.batch_size % self.context.world_size:
            raise ConfigError(f"train.batch_size {loop.batch_size} is not divisible by the "
                              f"{self.context.world_size} processes")
        self.per_rank = loop.batch_size // self.context.world_size
        if resume is None and step_dirs(self.checkpoints):
            raise ConfigError(f"{self.run_dir} already has checkpoints; pass --resume to continue it or "
                              f"choose another --out")

        self._seed_everything(loop.seed)
        self.task: Task = TASKS[config.task](config, self.context)
        # The trained model: a WaveFlow or a TextToMel, both flows.
        self.flow = self.task.build_flow(init, init_path).to(device)
        self.objective = self.task.objective(self.flow).to(device)
        self.model: torch.nn.Module = self.objective
        if self.context.enabled:
            self.model = DistributedDataParallel(
                self.objective, device_ids=[device.index] if device.type == "cuda" else None)
        self.parameters = [p for p in self.flow.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(self.parameters, lr=config.optim.lr, betas=tuple(config.optim.betas),
                                          eps=config.optim.eps, weight_decay=config.optim.weight_decay)
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        # Each rank draws different random numbers (auxiliary-loss latents, dropout masks).
        self._seed_everything(loop.seed + 1 + self.context.rank)
        self.progress = Progress(world_size=self.context.world_size)
        if resume is not None:
            self._restore(read_state(resume), str(resume))

        data = self.task.train_data(self.per_rank, self.progress.position)
        self.sampler = data.sampler
        # A private generator keeps worker seeding from consuming the global RNG stream.
        self.loader = DataLoader(data.dataset, batch_sampler=self.sampler, collate_fn=data.collate,
                                 num_workers=loop.num_workers, pin_memory=device.type == "cuda",
                                 persistent_workers=loop.num_workers > 0,
                                 generator=torch.Generator().manual_seed(loop.seed))
        self.metrics: MetricsWriter | None = None
        if self.context.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            remove_stale_staging(self.checkpoints)
            (self.run_dir / "config.yaml").write_text(dump_yaml(config))
            self.metrics = MetricsWriter(self.run_dir, self.progress.step if resume is not None else None)
        self._stop_signal: int | None = None

    # -- setup helpers --------------------------------------------------------------------
    @staticmethod
    def _seed_everything(seed: int) -> None:
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)

    def _restore(self, state: TrainingState, where: str) -> None:
        check_state_dict(self.flow.state_dict(), state.model, where)
        self.flow.load_state_dict(state.model)
        try:
            self.optimizer.load_state_dict(state.optimizer)
        except (ValueError, KeyError) as error:
            raise ConfigError(f"{where}: optimizer state does not fit this model ({error})") from None
        if self.scaler is not None and state.scaler is not None:
            self.scaler.load_state_dict(state.scaler)
        self.progress = state.progress
        rank, world = self.context.rank, self.context.world_size
        if state.progress.world_size == world:
            restore_rng(state.rng[rank])
        else:
            log.warning("resuming a %d-process run with %d processes: data order and noise will differ from "
                        "an unbroken run; continuing at the start of the next epoch",
                        state.progress.world_size, world)
            self.progress.position = Position(state.progress.position.epoch + 1, 0)
            self.progress.world_size = world
        log.info("resumed from %s at step %d (epoch %d, batch %d)", where, self.progress.step,
                 self.progress.position.epoch, self.progress.position.batch)

    # -- one step -------------------------------------------------------------------------
    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.context.device.type, dtype=self.amp_dtype)

    def _train_step(self, batch: Any) -> tuple[str, dict[str, float]]:
        """One optimizer step; returns ("ok" | "bad" | "overflow", scalar terms)."""
        arguments = self.task.to_device(batch)
        with self._autocast():
            terms = self.model(*arguments)
        loss = terms["loss"]
        values = {k: float(v.detach()) for k, v in terms.items()}
        # Every rank must take the same branch, or DDP's gradient all-reduce would hang.
        if not distributed.all_true(bool(torch.isfinite(loss.detach())), self.context):
            self.optimizer.zero_grad(set_to_none=True)
            return "bad", values
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        clip = self.config.optim.grad_clip or math.inf
        norm = float(torch.nn.utils.clip_grad_norm_(self.parameters, clip))
        values["grad_norm"] = norm
        outcome = "ok"
        if self.scaler is not None:
            # With fp16 an overflow is routine: the scaler skips the step and lowers its scale.
            self.scaler.step(self.optimizer)
            self.scaler.update()
            if not math.isfinite(norm):
                outcome = "overflow"
                del values["grad_norm"]
        elif math.isfinite(norm):
            self.optimizer.step()
        else:
            outcome = "bad"
        self.optimizer.zero_grad(set_to_none=True)
        return outcome, values

    # -- the loop -------------------------------------------------------------------------
    def _handle_signal(self, signum: int, _frame: Any) -> None:
        if self._stop_signal is not None:
            raise KeyboardInterrupt  # a second signal: stop now, without a checkpoint
        log.info("%s received: stopping after this step with a checkpoint (again: stop at once)",
                 signal.Signals(signum).name)
        self._stop_signal = signum

    def fit(self, stop_at: int | None = None) -> RunResult:
        """Train to `train.max_steps`, or until a SIGINT/SIGTERM or step `stop_at`, then checkpoint."""
        loop = self.config.train
        previous = {s: signal.signal(s, self._handle_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            return self._fit(loop.max_steps if stop_at is None else min(stop_at, loop.max_steps))
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            if self.metrics is not None:
                self.metrics.close()
            distributed.cleanup()

    def _fit(self, last_step: int) -> RunResult:
        loop, progress = self.config.train, self.progress
        started = time.time()
        wall_at_start = progress.wall_time
        log.info("training from step %d to %d (of %d); %s; lr %.2e %s; run dir %s", progress.step,
                 last_step, loop.max_steps, self.task.summary, self.config.optim.lr,
                 self.config.optim.schedule, self.run_dir)
        interactive = sys.stderr.isatty()
        bar = tqdm(total=loop.max_steps, initial=progress.step, disable=not self.context.is_main,
                   unit="step", dynamic_ncols=True, mininterval=1 if interactive else 60, file=sys.stderr)
        sums: dict[str, float] = {}
        counted, interval_start, interval_steps, interval_audio, paused = 0, time.time(), 0, 0.0, 0.0
        saved_at: int | None = None
        batches = iter(self.loader)
        stopped = False
        while progress.step < last_step:
            if distributed.any_true(self._stop_signal is not None, self.context):
                stopped = True
                break
            for group in self.optimizer.param_groups:
                group["lr"] = learning_rate(self.config.optim, progress.step, loop.max_steps)
            batch = next(batches)
            progress.position = self.sampler.advance(progress.position)
            outcome, values = self._train_step(batch)
            progress.step += 1
            interval_steps += 1
            # Every process's batch is as long as this one's (bucketed utterances: about as long).
            interval_audio += self.task.batch_seconds(batch) * self.context.world_size
            bar.update(1)
            if outcome == "bad":
                progress.skipped_steps += 1
                progress.bad_steps += 1
                log.warning("step %d: non-finite loss or gradients on some rank (here: %s); step skipped "
                            "(%d in a row)",
                            progress.step, ", ".join(f"{k} {v:.4g}" for k, v in values.items()),
                            progress.bad_steps)
                if progress.bad_steps >= loop.max_bad_steps:
                    bar.close()
                    raise TrainingError(
                        f"training diverged: {progress.bad_steps} consecutive steps with non-finite loss or "
                        f"gradients (up to step {progress.step}); lower optim.lr or set optim.grad_clip, and "
                        f"resume from the last checkpoint in {self.checkpoints}")
            else:
                progress.bad_steps = 0
                if outcome == "overflow":
                    progress.skipped_steps += 1
                for key, value in values.items():
                    sums[key] = sums.get(key, 0.0) + value
                counted += 1
            if progress.step % loop.log_every == 0:
                elapsed = time.time() - interval_start - paused
                means = {k: v / max(counted, 1) for k, v in sums.items()}
                means = distributed.mean_over_ranks(means, self.context)
                record = {**means, "lr": self.optimizer.param_groups[0]["lr"], **self.task.train_record(),
                          "throughput": interval_audio / max(elapsed, 1e-9),
                          "steps_per_second": interval_steps / max(elapsed, 1e-9),
                          "epoch": progress.position.epoch, "skipped_steps": progress.skipped_steps}
                self._log_train(progress.step, record, bar)
                sums, counted, interval_start, interval_steps, interval_audio, paused = {}, 0, time.time(), 0, 0.0, 0.0
            # Throughput counts training only, not the validation and checkpoint pauses.
            pause_start = time.time()
            if progress.step % loop.val_every == 0 and self.context.is_main:
                self.validate(progress.step)
            if progress.step % loop.checkpoint_every == 0 or progress.step == loop.max_steps:
                progress.wall_time = wall_at_start + time.time() - started
                self.save()
                saved_at = progress.step
            paused += time.time() - pause_start
        bar.close()
        stopped = stopped or progress.step < loop.max_steps
        checkpoint = None
        if saved_at != progress.step:
            progress.wall_time = wall_at_start + time.time() - started
            checkpoint = self.save()
        elif self.context.is_main:
            checkpoint = self.checkpoints / f"step-{progress.step:08d}"
        if stopped:
            reason = (f"signal {signal.Signals(self._stop_signal).name}" if self._stop_signal is not None
                      else f"stop at step {last_step}")
            log.info("stopped (%s) at step %d; resume with: vocoder train --resume %s", reason, progress.step,
                     self.run_dir)
        else:
            log.info("finished %d steps in %.0f s; final checkpoint %s", progress.step,
                     time.time() - started, checkpoint)
        distributed.cleanup()
        return RunResult(progress.step, stopped, checkpoint)

    def _log_train(self, step: int, record: dict[str, float], bar: tqdm) -> None:
        if self.metrics is None:
            return
        self.metrics.scalars(step, "train", record)
        terms = " ".join(f"{k} {record[k]:.4f}" for k in ("loss", "nll", "duration", "stft", "mel") if k in record)
        bar.set_postfix_str(f"loss {record.get('loss', float('nan')):.4f}", refresh=False)
        bar.write(f"step {step} {terms} lr {record['lr']:.2e} grad_norm {record.get('grad_norm', float('nan')):.3g} "
                  f"{record['throughput']:.2f} audio-s/s ({record['steps_per_second']:.3f} steps/s)",
                  file=sys.stderr)

    # -- validation -----------------------------------------------------------------------
    @torch.no_grad()
    def validate(self, step: int) -> dict[str, float]:
        """The task's validation (on rank 0), logged as `val/*` scalars."""
        if self.metrics is None:
            return {}
        started = time.time()
        values = self.task.validate(self.flow, step, self.metrics)
        if not values:
            return {}
        values["seconds"] = time.time() - started
        self.metrics.scalars(step, "val", values)
        self.metrics.flush()
        log.info("step %d validation: %s (%.1f s)", step,
                 ", ".join(f"{k} {v:.4f}" for k, v in values.items() if k != "seconds"), values["seconds"])
        return values

    # -- checkpoints ----------------------------------------------------------------------
    def save(self) -> Path | None:
        """Write a training checkpoint (rank 0; every rank contributes its RNG state)."""
        rng: list[RngState] | None = distributed.gather_to_main(capture_rng(), self.context)
        path = None
        if self.context.is_main:
            assert rng is not None
            progress = self.progress
            state = TrainingState(model=self.flow.state_dict(), optimizer=self.optimizer.state_dict(),
                                  scaler=self.scaler.state_dict() if self.scaler is not None else None,
                                  progress=progress, rng=rng)
            metadata = {"train_config": self.config.to_dict(), "step": progress.step,
                        "wall_time_seconds": round(progress.wall_time, 1), "epoch": progress.position.epoch,
                        "init": self.init_path, "world_size": self.context.world_size}

            def fill(directory: Path) -> None:
                self.task.export(directory, self.flow, metadata)
                write_state(directory, state)

            path = commit_checkpoint(self.checkpoints, progress.step, fill, self.config.train.keep_last)
            log.info("step %d: saved %s", progress.step, path)
        distributed.barrier(self.context)
        return path
