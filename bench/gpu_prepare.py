"""Build the folder that travels to a lent GPU machine for `bench/gpu_run.sh` (ignored by git: `.devcarry/`).

The device image has torch, transformers, peft, accelerate and pandas, but not the default model's package,
plotly or wordfreq, and at most 64 MiB travels with the working tree. So this writes:

- ``model/``: all-MiniLM-L6-v2 with its weights rounded to float16 (45 MB instead of 91; ``gpu_run.sh``
  turns them back into float32 there, so training sees float32 weights within fp16's rounding, 5e-4 relative);
- ``data/NAME/``: each data set's CSV files and SOURCE.md;
- ``site/wordfreq/``: a stand-in for the wordfreq package (its data alone is 58 MB) that answers
  ``word_frequency`` and ``zipf_frequency`` from a table of wordfreq's own figures for every word that mining
  asks about on each data set's training split and on its ``--shots`` subsets as the bench draws them
  (recorded here by running the same mining; a ``--limit`` subset may ask others); a word outside the table is
  counted in ``$WORDFREQ_MISSES`` and answered as unseen, so a run says when it could differ;
- ``whl/``: the plotly wheel, when given (``--plotly-wheel``), for the bench's report page.

    python bench/gpu_prepare.py --data ../shared/data/banking77 --plotly-wheel /tmp/whl/plotly-7.1.0-py3-none-any.whl
    python bench/gpu_prepare.py --data ../shared/data/{banking77,snips,trec6,hint3_sofmattress} --shots 10 ...
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

MODEL_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")

SHIM = '''"""Stand-in for wordfreq on the GPU machine (bench/gpu_prepare.py): wordfreq's own figures, recorded."""
import json
import os
from pathlib import Path

_TABLE = json.loads((Path(__file__).with_name("table.json")).read_text())


def _look_up(kind, word):
    value = _TABLE[kind].get(word)
    if value is None:
        with open(os.environ.get("WORDFREQ_MISSES", "/tmp/wordfreq_misses.txt"), "a") as misses:
            misses.write(f"{kind}\\t{word}\\n")
        return 0.0
    return value


def word_frequency(word, lang="en"):
    return _look_up("word_frequency", word)


def zipf_frequency(word, lang="en"):
    return _look_up("zipf_frequency", word)
'''


def write_model(out: Path) -> None:
    from clm_explore.modeling import default_model_path

    source = Path(default_model_path())
    out.mkdir(parents=True, exist_ok=True)
    tensors = load_file(source / "model.safetensors")
    save_file({k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}, out / "model.safetensors",
              metadata={"format": "pt"})
    for name in MODEL_FILES:
        if (source / name).exists():
            shutil.copy(source / name, out / name)


def training_splits(data_dir: Path, shots: list[int]) -> list[tuple[list[str], list[str]]]:
    """(texts, labels) of the training split after the validation carve, and of each few-shot subset that
    ``clm-explore bench --shots K`` trains on."""
    import tempfile

    from clm_explore.bench import BenchConfig, prepare_data
    from clm_explore.data import load_data

    data = load_data(data_dir)
    splits = [data.train]
    for k in shots:
        with tempfile.TemporaryDirectory() as tmp:
            folder, _ = prepare_data(data, BenchConfig(methods=("full",), shots=k), Path(tmp))
            splits.append(load_data(folder).train)
    return [(frame["text"].tolist(), frame["label"].tolist()) for frame in splits]


def record_wordfreq(data_dirs: list[Path], shots: list[int], out: Path) -> int:
    """Run mining as finetune does on every training split and record every lookup."""
    import wordfreq

    from clm_explore.config import MiningConfig
    from clm_explore.mining import mine_task_tokens
    from clm_explore.modeling import load_model

    table: dict[str, dict[str, float]] = {"word_frequency": {}, "zipf_frequency": {}}
    real = {kind: getattr(wordfreq, kind) for kind in table}

    def recorder(kind: str):
        def look_up(word: str, lang: str = "en", *args, **kwargs) -> float:
            value = real[kind](word, lang, *args, **kwargs)
            if not args and not kwargs:  # zipf_frequency calls word_frequency with its own extra arguments
                table[kind][word] = value
            return value
        return look_up

    for kind in table:
        setattr(wordfreq, kind, recorder(kind))
    tokenizer = load_model("default", ["a", "b"]).tokenizer
    for data_dir in data_dirs:
        for texts, labels in training_splits(data_dir, shots):
            mine_task_tokens(texts, labels, tokenizer, MiningConfig())
    out.mkdir(parents=True, exist_ok=True)
    (out / "__init__.py").write_text(SHIM)
    (out / "table.json").write_text(json.dumps(table))
    return sum(len(v) for v in table.values())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, nargs="+", help="data folders, e.g. ../shared/data/banking77")
    ap.add_argument("--shots", type=int, nargs="*", default=[], help="few-shot subsets to record mining on too")
    ap.add_argument("--out", default=".devcarry")
    ap.add_argument("--plotly-wheel", help="a downloaded plotly wheel (pip download --no-deps plotly)")
    args = ap.parse_args()
    out, data_dirs = Path(args.out), [Path(d) for d in args.data]
    torch.set_num_threads(1)
    write_model(out / "model")
    for data_dir in data_dirs:
        shutil.copytree(data_dir, out / "data" / data_dir.name, dirs_exist_ok=True)
    print(f"wordfreq lookups recorded: {record_wordfreq(data_dirs, args.shots, out / 'site' / 'wordfreq')}")
    if args.plotly_wheel:
        (out / "whl").mkdir(exist_ok=True)
        shutil.copy(args.plotly_wheel, out / "whl")
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"{out}: {total / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
