"""The share of a run's rows each (layer, module) trained, read from its ``masks.safetensors`` with numpy: the
model card and the report show it, and the card needs no torch (see ``model_names``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from clm_explore.model_names import LAYER_RE, MODULE_ORDER, ModelSourceError, classify_linear


def _layer_count(run_dir: Path, seen: list[int]) -> int:
    """The run's model's transformer layers (its config.json's), else one above the highest layer its masks name."""
    from clm_explore.runs import read_json_object

    count = read_json_object(run_dir / "config.json").get("num_hidden_layers")
    return count if isinstance(count, int) else max(seen, default=-1) + 1


def _selected(mask: np.ndarray) -> np.ndarray:
    """Per row of a saved mask, whether it was selected."""
    flags = mask.astype(bool)
    return flags.reshape(flags.shape[0], -1).any(axis=1) if flags.ndim > 1 else flags


def _scored_records(run_dir: Path, masks: dict[str, np.ndarray]) -> list[tuple[str | None, str, int, int]] | None:
    """(layer, module, selected rows, rows) of every matrix the run's scores cover (its sensitivity.json), as the
    Budget page counts them: a map with no row chosen at 0, the embeddings over the rows that could be chosen (the
    budget review: the card read "4 of 30,522" embedding rows where the page read 4 of 605, and left out every map
    with none chosen). None where the run kept no scores that name its masks (a gradient run, an older folder)."""
    from clm_explore.runs import read_json_object

    matrices = read_json_object(run_dir / "sensitivity" / "sensitivity.json").get("matrices")
    if not isinstance(matrices, dict) or not set(masks) <= set(matrices):
        return None
    records = []
    for name, info in matrices.items():
        eligible = info.get("eligible_rows")
        rows = len(eligible) if isinstance(eligible, list) else int(info.get("rows") or 0)
        picked = int(_selected(masks[name]).sum()) if name in masks else 0
        layer = "emb" if info.get("module") == "embeddings" else str(info.get("layer"))
        records.append((layer, str(info.get("module")), picked, rows))
    return records


def _mask_records(masks: dict[str, np.ndarray]) -> list[tuple[str | None, str, int, int]]:
    """(layer, module, selected rows, rows) of each saved mask, from its name and length alone (None: the pooler,
    placed above the top layer by the caller)."""
    records: list[tuple[str | None, str, int, int]] = []
    for name, mask in masks.items():
        rows = _selected(mask)
        found = LAYER_RE.search(name)
        kind = classify_linear(name.removesuffix(".weight"))
        if found:  # the module's kind (q, ffn_in, ...), as the sensitivity and weight-change tables name it
            layer, module = found.group(1), kind[1] if kind else found.group(2)
        elif "embed" in name:
            layer, module = "emb", "embeddings"
        elif kind and kind[1] == "pooler":  # a backbone map under the budget: its rows left out, the card summed
            layer, module = None, "pooler"  # fewer rows than were trained (the real-model review)
        else:
            continue  # the head and anything else outside the layer stack
        records.append((layer, module, int(rows.sum()), int(rows.size)))
    return records


def mask_table(run_dir: Path) -> pd.DataFrame:
    """Share of selected rows per (layer, module) from ``masks.safetensors``; empty when absent.

    Returns:
        DataFrame [layer, module, selected_rows, rows, share]; layer 'emb' for embedding matrices, the number above
        the top layer for BERT's pooler (as the sensitivity and weight-change tables place it).

    Raises:
        ModelSourceError: the file cannot be read (damaged or truncated), named with what to do.
    """
    path = run_dir / "masks.safetensors"
    if not path.is_file():
        return pd.DataFrame(columns=["layer", "module", "selected_rows", "rows", "share"])
    from safetensors import SafetensorError
    from safetensors.numpy import load_file  # numpy: the card reads this table without torch

    try:
        masks = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise ModelSourceError(f"{path} cannot be read ({exc}); restore it, or delete it (reports and the model card then "
                               "show no mask for this run).") from exc
    records = _scored_records(run_dir, masks)
    if records is None:
        records = _mask_records(masks)
    above = str(_layer_count(run_dir, [int(r[0]) for r in records if r[0] not in (None, "emb")]))
    records = [(above if layer is None else layer, *rest) for layer, *rest in records]
    frame = pd.DataFrame(records, columns=["layer", "module", "selected_rows", "rows"])
    frame = frame.groupby(["layer", "module"], as_index=False, sort=False)[["selected_rows", "rows"]].sum()
    order = frame["module"].map(lambda m: MODULE_ORDER.index(m) if m in MODULE_ORDER else len(MODULE_ORDER))
    frame = frame.assign(order=order).sort_values(["order", "module"], kind="stable").drop(columns="order")
    frame = frame.reset_index(drop=True)
    return frame.assign(share=frame["selected_rows"] / frame["rows"].clip(lower=1))
