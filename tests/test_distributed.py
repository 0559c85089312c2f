"""Two CPU processes (gloo, via accelerate launch) finetune together and end on the same weights."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file


def _launch(data_dir: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    if accelerate is None:
        pytest.skip("accelerate's launcher is not installed")
    # --multi_gpu with no GPU visible makes accelerate start torch.distributed workers that use gloo on CPU.
    cmd = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--main_process_port", str(_free_port()),  # accelerate's 29500: two suites at once would collide
           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "clm_explore.cli", "finetune",
           "--data", str(data_dir), "--model", "tiny-random", "--epochs", "1", "--batch-size", "8",
           "--out", str(out), "--json", *extra]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _same_weights(out: Path) -> None:
    main, other = load_file(out / "model.safetensors"), load_file(out / "ranks" / "1" / "model.safetensors")
    assert main.keys() == other.keys()
    assert all(torch.equal(main[k], other[k]) for k in main)


def test_two_ranks_agree_on_final_weights_and_a_rerun_overwrites(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    done = _launch(data_dir, out, "--budget", "0.05")
    assert done.returncode == 0, done.stderr[-3000:]
    _same_weights(out)
    delta = load_file(out / "delta.safetensors")  # training moved the rows (the check above is not vacuous)
    assert any(v.abs().max() > 0 for k, v in delta.items() if k.endswith("delta_w"))
    # The run's time and memory are its slowest and largest process's, each process's kept (rank 0's alone before).
    metrics = json.loads((out / "metrics.json").read_text())
    ranks = metrics["per_rank"]
    assert len(ranks) == 2 and all(r["peak_memory_mb"] >= 0 and r["train_seconds"] > 0 for r in ranks)
    assert metrics["peak_memory_mb"] == max(r["peak_memory_mb"] for r in ranks)
    assert metrics["train_seconds"] == max(r["train_seconds"] for r in ranks)
    assert json.loads((out / "ranks" / "1" / "metrics.json").read_text())["per_rank"] == ranks
    # Again into the same folder, with prefix tuning (its secondary rank saves a model with shared tensors):
    # rank 0 empties the folder before the other rank writes its copy into it.
    # Keeping the best epoch: every rank keeps (and would stop at) the same epoch; they read rank 0's validation
    # accuracy, which here equals their own (the same weights and rows), so this checks the path runs, not the
    # broadcast's need.
    again = _launch(data_dir, out, "--method", "prefix", "--overwrite", "--keep-best", "--early-stop", "1")
    assert again.returncode == 0, again.stderr[-3000:]
    assert (out / "ranks" / "1" / "model.safetensors").is_file() and (out / "metrics.json").is_file()
    kept = [json.loads((folder / "metrics.json").read_text()) for folder in (out, out / "ranks" / "1")]
    assert [(m["saved_epoch"], m["best_val_accuracy"]) for m in kept] == [(1, kept[0]["val_curve"][0]["accuracy"])] * 2
    assert not (out / "masks.safetensors").exists()  # nothing of the sparse run is left to be read as this one's
    # Into the same folder without --overwrite: every process refuses it, so none waits for another (the other
    # rank waited for rank 0 at the barrier until the launcher killed it, 30 s on).
    refused = _launch(data_dir, out, "--method", "prefix")
    assert refused.returncode != 0 and "already exists; replace it with --overwrite" in refused.stderr
    # (the launcher's own traceback reports the exit status 2; none comes from our code)
    assert "forcefully exiting" not in refused.stderr and "/clm_explore/" not in refused.stderr, refused.stderr[-3000:]
    assert (out / "metrics.json").is_file()  # the earlier run is left as it was


def test_a_launchs_mixed_precision_does_not_replace_the_runs_own(monkeypatch) -> None:
    """The GPU review: `accelerate launch --mixed_precision fp16` (or a default_config.yaml) wrapped the model in
    accelerate's fp16 autocast, under the loop's bf16 and with no loss scaling; a config's dynamo backend compiled it."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    from clm_explore.modeling import load_model
    from clm_explore.training import accelerator_options

    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    monkeypatch.setenv("ACCELERATE_DYNAMO_BACKEND", "inductor")
    try:
        accelerator = Accelerator(**accelerator_options(torch.device("cpu")))
        assert accelerator.mixed_precision == "no" and not accelerator.native_amp
        model = load_model("tiny-random", ["a", "b"]).model
        accelerator.prepare_model(model)
        seen: list[torch.dtype] = []
        model.bert.encoder.layer[0].attention.self.query.register_forward_hook(lambda m, a, out: seen.append(out.dtype))
        with torch.no_grad():
            model(input_ids=torch.ones(2, 5, dtype=torch.long))
        assert seen == [torch.float32]
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
