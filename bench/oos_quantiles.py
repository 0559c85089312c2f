"""How the out-of-scope accuracy of finished runs depends on the abstention quantile (a table, not a choice).

`finetune` scores test rows of labels unseen in train with abstention below one quantile of the validation
rows' top probabilities (`FinetuneConfig.out_of_scope_quantile`, 0.1). This script rescores finished run
folders at other quantiles, to show whether a comparison of methods holds across them; picking the quantile
from this table would be choosing it on test. Validation rows come from the run's data folder (a grid's
`data/validation.csv`), the test rows' predictions from the run's `predictions.csv`.

    python bench/oos_quantiles.py DATA_DIR RUN_GLOB [RUN_GLOB ...] [--quantiles 0.05,0.1,0.2]
    e.g. python bench/oos_quantiles.py bench/out/hint3_sofmattress-full-oos/data \\
             'bench/out/hint3_sofmattress-full-oos/cells/*' 'bench/out/hint3_sofmattress-full-oos/probes/test-*'
"""

from __future__ import annotations

import argparse
import glob
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd

from clm_explore.batches import predict_proba
from clm_explore.metrics import out_of_scope_metrics
from clm_explore.modeling import load_run


def rescore(run_dir: Path, validation: list[str], quantiles: list[float]) -> dict[float, float]:
    """Out-of-scope accuracy of one run at each quantile."""
    metrics = json.loads((run_dir / "metrics.json").read_text())
    labels = metrics["labels"]
    rows = pd.read_csv(run_dir / "predictions.csv")
    index = {name: i for i, name in enumerate(labels)}
    gold = np.array([index.get(x, -1) for x in rows["label"]])
    pred = np.array([index[x] for x in rows["pred"]])
    loaded = load_run(run_dir)
    max_length = json.loads((run_dir / "clm_run.json").read_text())["config"]["max_length"]
    val_top = predict_proba(loaded.model, loaded, validation, max_length).max(1)
    return {q: out_of_scope_metrics(gold, pred, rows["prob"].to_numpy(), val_top, q, len(labels))["accuracy"]
            for q in quantiles}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--quantiles", default="0.05,0.1,0.2")
    args = parser.parse_args()
    quantiles = [float(q) for q in args.quantiles.split(",")]
    validation = pd.read_csv(args.data_dir / "validation.csv")["text"].astype(str).tolist()
    groups: dict[str, list[dict[float, float]]] = defaultdict(list)
    for pattern in args.runs:
        for run in sorted(glob.glob(pattern)):
            groups[Path(run).name.rsplit("-s", 1)[0]].append(rescore(Path(run), validation, quantiles))
    print("runs\tn\t" + "\t".join(f"q={q:g}" for q in quantiles))
    for name, scores in groups.items():
        cells = [np.array([s[q] for s in scores]) for q in quantiles]
        print(f"{name}\t{len(scores)}\t" + "\t".join(f"{c.mean():.3f} ± {c.std(ddof=1) if len(c) > 1 else 0:.3f}"
                                                      for c in cells), flush=True)


if __name__ == "__main__":
    main()
