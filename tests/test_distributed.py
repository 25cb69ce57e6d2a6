"""DistributedDataParallel on the CPU (gloo, 2 processes): ranks see different data yet end
with identical parameters, skip a non-finite step together, and only rank 0 writes."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import yaml
from safetensors.torch import load_file, save_file

from training.config import config_from_dict
from training.state import step_dirs
from training.trainer import Trainer, resolve_model
from vocoder.checkpoint import load_checkpoint

pytestmark = pytest.mark.usefixtures("restore_torch_globals")

WORLD = 2
STEPS = 6
POISONED_STEP = 3


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, raw: dict, port: int, out: str) -> None:
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(WORLD),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    trainer = Trainer(resolve_model(config_from_dict(raw), None))
    initial = {k: v.detach().clone().contiguous() for k, v in trainer.flow.state_dict().items()}
    seen = []
    original = trainer.objective.forward

    def forward(audio, lengths):
        seen.append(audio.sum().item())
        terms = original(audio, lengths)
        if rank == 1 and trainer.progress.step + 1 == POISONED_STEP:
            terms["loss"] = terms["loss"] * float("nan")
        return terms

    trainer.objective.forward = forward
    trainer.fit()
    final = {k: v.detach().contiguous() for k, v in trainer.flow.state_dict().items()}
    save_file({**{f"final.{k}": v for k, v in final.items()}, **{f"initial.{k}": v for k, v in initial.items()},
               "seen": torch.tensor(seen, dtype=torch.float64),
               "skipped": torch.tensor(trainer.progress.skipped_steps)}, f"{out}/rank{rank}.safetensors")


def test_ranks_stay_identical(tmp_path, speech_dir, tiny_recipe):
    raw = {**tiny_recipe, "data": {"paths": [str(speech_dir / "ljspeech")], "val_clips": 0},
           "train": {**tiny_recipe["train"], "max_steps": STEPS, "val_every": 100, "checkpoint_every": 100},
           "out_dir": str(tmp_path / "run")}
    # fork skips re-importing torch in each child, which dominates the run time on a small CPU.
    mp.start_processes(_worker, args=(raw, free_port(), str(tmp_path)), nprocs=WORLD, join=True,
                       start_method="fork")
    ranks = [load_file(str(tmp_path / f"rank{r}.safetensors")) for r in range(WORLD)]
    finals = [{k: v for k, v in r.items() if k.startswith("final.")} for r in ranks]
    assert finals[0].keys() == finals[1].keys()
    assert all(torch.equal(finals[0][k], finals[1][k]) for k in finals[0])
    assert any(not torch.equal(ranks[0][k], ranks[0]["initial." + k[len("final."):]]) for k in finals[0])
    assert not torch.equal(ranks[0]["seen"], ranks[1]["seen"])  # each rank trained on its own shard
    assert int(ranks[0]["skipped"]) == int(ranks[1]["skipped"]) == 1
    (step, _), = step_dirs(tmp_path / "run" / "checkpoints")
    assert step == STEPS


def test_torchrun_cli(tmp_path, speech_dir, tiny_recipe):
    raw = {**tiny_recipe, "data": {"val_clips": 1},
           "train": {**tiny_recipe["train"], "max_steps": 3, "val_every": 3, "checkpoint_every": 3}}
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(raw))
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(WORLD), "--master_port",
         str(free_port()), "-m", "vocoder.cli", "train", "--config", str(recipe), "--data",
         str(speech_dir / "ljspeech"), "--out", str(run)],
        capture_output=True, text=True, env=env, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    checkpoint = load_checkpoint(run / "checkpoints" / "step-00000003")
    assert checkpoint.metadata["world_size"] == WORLD
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "train"] == [1, 2, 3]  # rank 0 alone logs
    assert result.stderr.count("finished 3 steps") == 1
