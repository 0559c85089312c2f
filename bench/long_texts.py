"""What one upload of very long texts costs the server to tokenize: a fast tokenizer's call on the texts uncut (as
every call was before the fifty-third session) against ``batches.tokenized`` (each text cut to 32 characters per
sub-token read, 256 texts a call), side by side, each in a fresh process so that its peak memory is its own.

The texts: ``--cells`` cells of ``--cell-mb`` MB of punctuation (a sub-token a character: the worst case found) and
200 ordinary texts, counted up to 513 sub-tokens as the Data page counts them.

    .venv/bin/python bench/long_texts.py [--model default] [--cells 2] [--cell-mb 9]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

COUNTED = 513  # the Data page's count: one past the most a run reads


def measure(way: str, model: str, cells: int, cell_mb: float) -> dict:
    """Runs in the child: the call ``way`` ('uncut' or 'bounded'), its seconds and the process's peak memory."""
    from clm_explore.batches import tokenized
    from clm_explore.modeling import load_tokenizer

    tokenizer = load_tokenizer(model)
    texts = ["!" * int(cell_mb * 2**20)] * cells + ["my card has not arrived yet, what do I do? " * 20] * 200
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    started = time.perf_counter()
    if way == "uncut":
        lengths = [len(ids) for ids in tokenizer(texts, truncation=False)["input_ids"]]
    else:
        chunks = tokenized(tokenizer, texts, COUNTED, truncation=True, max_length=COUNTED)
        lengths = [len(ids) for chunk in chunks for ids in chunk["input_ids"]]
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"way": way, "seconds": seconds, "peak_mb": peak, "added_mb": peak - before,
            "longest": max(lengths), "long_texts": sum(n > 512 for n in lengths)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--cells", type=int, default=2)
    parser.add_argument("--cell-mb", type=float, default=9.0)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.model, args.cells, args.cell_mb)))
        return
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    rows = []
    for way in ("uncut", "bounded"):
        out = subprocess.run([sys.executable, __file__, "--child", way, "--model", args.model, "--cells",
                              str(args.cells), "--cell-mb", str(args.cell_mb)], env=env, capture_output=True,
                             text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"{args.cells} cells of {args.cell_mb:g} MB of punctuation + 200 ordinary texts, model {args.model}, "
          f"one thread, counted up to {COUNTED} sub-tokens")
    print(f"{'way':<8} {'seconds':>8} {'peak MB':>8} {'added MB':>9} {'longest':>9} {'> 512':>6}")
    for row in rows:
        print(f"{row['way']:<8} {row['seconds']:>8.1f} {row['peak_mb']:>8.0f} {row['added_mb']:>9.0f} "
              f"{row['longest']:>9,} {row['long_texts']:>6}")
    uncut, bounded = rows
    print(f"bounded / uncut: time {bounded['seconds'] / uncut['seconds']:.2f}, added memory "
          f"{bounded['added_mb'] / max(uncut['added_mb'], 1):.3f}; texts over 512 counted alike: "
          f"{uncut['long_texts'] == bounded['long_texts']}")


if __name__ == "__main__":
    main()
