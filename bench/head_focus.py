"""Did training make the heads whose rows the mask chose look more at the mined task tokens?

For a finished row-method run: over its test rows, each attention head's attention to the run's mined task tokens
(``layer_views.head_attention``) under the run's model and under its base model, and the share of the head's query,
key and value rows the mask selected. Prints, per layer from the mask's lowest, the mean change in task attention of
the heads with selected rows against the heads without, and the rank correlation between a head's selected share
and its change.

    .venv/bin/python bench/head_focus.py runs/my-sparse [--max-rows 200]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from clm_explore.casestudy import spearman, split_frame
from clm_explore.changes import base_model
from clm_explore.layer_views import _attentions, head_attention
from clm_explore.modeling import finished_run, load_run
from clm_explore.runs import trained_max_length


def task_attention(attention: np.ndarray, positions: list[int], special: set[int]) -> np.ndarray:
    """(layers, heads): the text's tokens' mean attention to the task positions (as ``head_attention`` computes it)."""
    queries = [i for i in range(attention.shape[2]) if i not in special]
    return attention[:, :, queries][:, :, :, positions].sum(-1).mean(-1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="a finished sparse, fisher, gradient or random run folder")
    parser.add_argument("--max-rows", type=int, default=200, help="test rows read (the first N)")
    args = parser.parse_args()
    folder = finished_run(args.run)
    started = time.perf_counter()
    tuned, base = load_run(folder), base_model(folder)
    length = trained_max_length(folder)
    texts = split_frame(folder)["text"].astype(str).tolist()[: args.max_rows]
    run_sum = base_sum = None
    counted = 0
    selected = None
    for text in texts:
        view = head_attention(folder, text, loaded=tuned)
        if not view.task_positions:
            continue
        attention, _, special, _ = _attentions(base, text, length)
        before = task_attention(attention, view.task_positions, special)
        run_sum = view.task_attention if run_sum is None else run_sum + view.task_attention
        base_sum = before if base_sum is None else base_sum + before
        selected = view.selected
        counted += 1
    if selected is None or run_sum is None or base_sum is None:
        print("No test text holds a mined task token, or the run has no row mask.", file=sys.stderr)
        return 2
    after, before = run_sum / counted, base_sum / counted
    frame = pd.DataFrame({"layer": np.repeat(np.arange(after.shape[0]), after.shape[1]),
                          "head": np.tile(np.arange(after.shape[1]), after.shape[0]),
                          "selected": selected.reshape(-1), "before": before.reshape(-1),
                          "after": after.reshape(-1)}).assign(change=lambda f: f["after"] - f["before"])
    lowest = int(frame.loc[frame["selected"] > 0, "layer"].min())
    upper = frame[frame["layer"] >= lowest]
    print(f"{Path(folder).name}: {counted} of {len(texts)} test texts hold a mined task token; "
          f"{time.perf_counter() - started:.1f} s")
    print("layer  heads with rows  change (with rows)  change (without)  mean selected share")
    for layer, rows in upper.groupby("layer"):
        picked = rows[rows["selected"] > 0]
        rest = rows[rows["selected"] == 0]
        print(f"{layer:>5}  {len(picked):>15}  {picked['change'].mean():>+18.4f}  "
              f"{rest['change'].mean() if len(rest) else float('nan'):>+16.4f}  {rows['selected'].mean():>19.3f}")
    rho = spearman(upper["selected"].to_numpy(), upper["change"].to_numpy())
    print(f"Spearman (selected share, change in task attention) over the {len(upper)} heads of layers "
          f"{lowest}-{int(upper['layer'].max())}: {rho:+.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
