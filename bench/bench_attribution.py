"""Attribution speed and convergence on banking77 test sentences.

Usage: python bench/bench_attribution.py [--run RUN_DIR] [--n 64] [--steps 32] [--threads 2] [--settings 1x32,8x256]

Times ``explain`` (Integrated Gradients, word embeddings) on the default model (a random head over
all-MiniLM-L6-v2) or a finetuned run folder, and prints seconds per sentence and mean |delta| for a few
batch settings (``batch x internal batch``), each in a process of its own so that its peak memory (the process's
peak resident set, the model included) is its own. Targets: <= 0.25 s/sentence on 2 CPU cores, mean |delta| < 0.05.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from clm_explore.attribution import explain, load_run_model, mean_abs_delta  # noqa: E402
from clm_explore.config import AttributionConfig  # noqa: E402
from clm_explore.modeling import load_model  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "banking77" / "test.csv"


def fit_head(loaded, train_csv: Path, labels: list[str], n: int) -> None:
    """Fit the random head on frozen pooled features, so that outputs (and |delta|) are realistic."""
    start = time.perf_counter()
    frame = pd.read_csv(train_csv, dtype=str).sample(n=n, random_state=0)
    model, tok = loaded.model, loaded.tokenizer
    model.eval()
    feats = []
    with torch.no_grad():
        for i in range(0, n, 64):
            enc = tok(
                list(frame["text"][i : i + 64]),
                padding=True,
                truncation=True,
                max_length=64,
                return_tensors="pt",
            )
            feats.append(model.bert(**enc).pooler_output)
    x = torch.cat(feats)
    y = torch.tensor([labels.index(v) for v in frame["label"]])
    head = model.classifier
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    for _ in range(300):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(head(x), y)
        loss.backward()
        opt.step()
    acc = (head(x).argmax(-1) == y).float().mean()
    print(
        f"head fitted on {n} train rows in {time.perf_counter() - start:.1f}s: loss {loss.item():.3f}, train acc {acc:.2f}",
        file=sys.stderr,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default=None, help="a finetuned run folder (default: the default model)")
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--n", type=int, default=64, help="sentences")
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--fit-head", type=int, default=500, help="train rows to fit the random head on (0 = keep random)"
    )
    parser.add_argument("--settings", default="1x32,4x128,16x512",
                        help="batch x internal batch, comma-separated (4x128 is AttributionConfig's default)")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # a child: one setting, one table row
    args = parser.parse_args()
    if args.one is None:
        print(f"{'batch':>5} {'internal':>8} {'s/sentence':>10} {'cpu-s/thr':>10} {'mean|delta|':>11} "
              f"{'max|delta|':>10} {'load1':>6} {'peak MB':>8}")
        for setting in args.settings.split(","):  # a process each: the peak memory is the setting's own
            child = [sys.executable, __file__, "--data", args.data, "--n", str(args.n), "--steps", str(args.steps),
                     "--threads", str(args.threads), "--fit-head", str(args.fit_head), "--one", setting]
            child += ["--run", args.run] if args.run else []
            subprocess.run(child, check=True)
        return
    torch.set_num_threads(args.threads)
    frame = pd.read_csv(args.data, dtype=str).sample(n=args.n, random_state=0)
    texts = list(frame["text"])
    if args.run:
        loaded = load_run_model(args.run)
    else:
        labels = sorted(pd.read_csv(args.data, dtype=str)["label"].unique())
        loaded = load_model("default", labels)
        if args.fit_head:
            fit_head(loaded, Path(args.data).with_name("train.csv"), labels, args.fit_head)
    print(
        f"model: {args.run or 'default'}  sentences: {len(texts)}  steps: {args.steps}  threads: {args.threads}",
        file=sys.stderr,
    )
    explain(loaded.model, loaded.tokenizer, texts[:2], AttributionConfig(n_steps=4))  # warm-up
    for batch, internal in [tuple(int(x) for x in args.one.split("x"))]:
        cfg = AttributionConfig(n_steps=args.steps, batch_size=batch, internal_batch_size=internal)
        start, cpu = time.perf_counter(), time.process_time()
        results = explain(loaded.model, loaded.tokenizer, texts, cfg)
        per = (time.perf_counter() - start) / len(texts)
        # CPU seconds per thread: what a sentence costs when the cores are not shared with others.
        per_cpu = (time.process_time() - cpu) / args.threads / len(texts)
        worst = max(abs(r.delta) for r in results)
        load = os.getloadavg()[0]
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes
        print(
            f"{batch:>5} {internal:>8} {per:>10.3f} {per_cpu:>10.3f} {mean_abs_delta(results):>11.4f} {worst:>10.4f} "
            f"{load:>6.1f} {peak_mb:>8.0f}", flush=True
        )


if __name__ == "__main__":
    main()
