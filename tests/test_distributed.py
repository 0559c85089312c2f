"""Two CPU processes (gloo, via accelerate launch) finetune together and end on the same weights."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file


def test_two_ranks_agree_on_final_weights(data_dir: Path, tmp_path: Path) -> None:
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    if accelerate is None:
        pytest.skip("accelerate's launcher is not installed")
    out = tmp_path / "run"
    # --multi_gpu with no GPU visible makes accelerate start torch.distributed workers that use gloo on CPU.
    cmd = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "clm_explore.cli", "finetune",
           "--data", str(data_dir), "--model", "tiny-random", "--epochs", "1", "--batch-size", "8",
           "--budget", "0.05", "--out", str(out), "--json"]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    main, other = load_file(out / "model.safetensors"), load_file(out / "ranks" / "1" / "model.safetensors")
    assert main.keys() == other.keys()
    assert all(torch.equal(main[k], other[k]) for k in main)
    # and training did move the weights (the check above is not vacuous)
    masks = load_file(out / "masks.safetensors")
    assert masks, "a 5% budget selects some rows"
