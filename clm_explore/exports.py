"""A finished run copied for serving (``clm-explore export``, ``clm_explore.export_run``): the model, its tokenizer and
card, and a prefix or LoRA run's adapter, without the run's records.

Why: a run folder holds its test split's texts (predictions.csv), the data's absolute path and the command line
(clm_run.json), the mined words and the masks; uploaded or zipped whole it published all of them, and serving needs four
files of it (the interop review).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from clm_explore.runs import (
    TRAINED_LENGTH_KEY,
    read_json_object,
    run_folder,
    share_tensor_files,
    trained_max_length,
    write_json_atomic,
)

SERVING_FILES = ("config.json", "model.safetensors", "model.safetensors.index.json", "tokenizer.json",
                 "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "README.md")
"""The run folder's files a served model needs (those it has), the model card included."""
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
"""The files of a run's peft adapter (a prefix run's adapter/, a LoRA run's lora_adapter/) peft loads."""
ADAPTER_FOLDERS = ("adapter", "lora_adapter")  # baselines.ADAPTER_DIR, LORA_ADAPTER_DIR (not imported: peft-free)
EXPORT_RECORD = "clm_export.json"
"""What an export folder says of itself (the run it came from, its dtype): the one kind of folder ``overwrite``
replaces."""
DTYPES = ("float32", "float16", "bfloat16")


class ExportError(ValueError):
    """The run cannot be exported there; the message says why and what to do."""


def export_run(run: Any, out: str | Path, dtype: str = "float32", overwrite: bool = False,
               patch: bool = False) -> Path:
    """Copy what serving ``run`` needs into the folder ``out``: config, weights (cast to ``dtype``: float16 halves the
    size; the interop review saw the same top label on every row it checked), tokenizer, model card, and a prefix
    or LoRA run's adapter (its base named by the Hub id where the run's model has one, not a server path). Left out:
    the test predictions, clm_run.json, metrics, progress log, masks, deltas, mined tokens and scores. ``patch``: a
    row method's run as its delta.safetensors in place of the weights (about 1 MB for the default model at 1%), a
    LoRA run as its adapter alone, which ``apply_delta`` turns back into the model over the public base model.

    Raises:
        ModelSourceError: ``run`` is not a finished run.
        ExportError: ``out`` is the run folder or inside it, or holds files that are not an earlier export (or
            ``overwrite`` is not given), or ``dtype`` is unknown, or a patch is asked of a run that has none.
    """
    from clm_explore.modeling import finished_run

    if dtype not in DTYPES:
        raise ExportError(f"dtype must be one of {', '.join(DTYPES)}; got {dtype!r}.")
    source = finished_run(run_folder(run))
    record = read_json_object(source / "clm_run.json")
    if patch:
        _check_patch(source, record)
    target = Path(out).expanduser()
    _check_target(source, target, overwrite)
    staging = target.with_name(f".{target.name}.export-tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        _copy_serving_files(source, staging, dtype, patch)
        said = {"run": source.name, "dtype": dtype}
        if patch:  # what apply_delta needs of the run, without the rest of its record
            said["patch"] = {"method": record["method"], "source": record.get("source")}
        write_json_atomic(staging / EXPORT_RECORD, said)
        if target.exists():
            shutil.rmtree(target)
        staging.replace(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _check_target(source: Path, target: Path, overwrite: bool) -> None:
    here, run = target.resolve(), source.resolve()
    if here == run or run in here.parents or here in run.parents:
        raise ExportError(f"{target} is the run folder, inside it or above it; export to a folder of its own.")
    if target.exists() and not target.is_dir():
        raise ExportError(f"{target} is a file; an export is a folder.")
    if target.is_dir() and any(target.iterdir()):
        if not (target / EXPORT_RECORD).is_file():
            raise ExportError(f"{target} holds files that are not an export of clm-explore's; choose a new folder.")
        if not overwrite:
            raise ExportError(f"{target} holds an earlier export; replace it with --overwrite (overwrite=True).")


def _copy_serving_files(source: Path, target: Path, dtype: str, patch: bool = False) -> None:
    for name in (*SERVING_FILES, "delta.safetensors") if patch else SERVING_FILES:
        if not (source / name).is_file() or (source / name).is_symlink():
            continue
        if patch and name.startswith("model.safetensors"):  # the patch stands in for the weights
            continue
        if name == "model.safetensors" and dtype != "float32":
            _save_cast(source / name, target / name, dtype)
        else:
            shutil.copyfile(source / name, target / name)
    if dtype != "float32":
        config = read_json_object(target / "config.json")
        config["dtype"] = dtype
        write_json_atomic(target / "config.json", config)
    for folder in ADAPTER_FOLDERS:
        if (source / folder / "adapter_config.json").is_file():
            (target / folder).mkdir()
            for name in ADAPTER_FILES:
                shutil.copyfile(source / folder / name, target / folder / name)
            _name_the_base(target / folder / "adapter_config.json", read_json_object(source / "clm_run.json"))
    _say_exported(target / "README.md", patch)


def _save_cast(source: Path, target: Path, dtype: str) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    kind = getattr(torch, dtype)
    tensors = {name: t.to(kind) if t.is_floating_point() else t for name, t in load_file(source).items()}
    save_file(tensors, target, metadata={"format": "pt"})
    share_tensor_files([target])  # safetensors writes it owner-only: a colleague could read all but the weights


def _name_the_base(config_path: Path, record: dict[str, Any]) -> None:
    """peft's base model named by its Hub id where the run's model has one (else left unnamed): the run recorded
    the server's path to it, which loads nowhere else."""
    from clm_explore.cards import HUB_IDS

    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = HUB_IDS.get(str(record.get("source") or ""))
    write_json_atomic(config_path, config)


def _say_exported(card: Path, patch: bool) -> None:
    if card.is_file():
        how = (" It is a patch: `clm_explore.apply_delta(folder)` rebuilds the model from the base model and its "
               f"`{'lora_adapter/' if (card.parent / 'lora_adapter').is_dir() else 'delta.safetensors'}`."
               if patch else "")
        card.write_text(card.read_text(encoding="utf-8").rstrip("\n") + "\n\nExported for serving by `clm-explore "
                        "export`: the run's records (`clm_run.json`, `metrics.json`, `predictions.csv`, the masks) "
                        f"stay in the run folder.{how}\n", encoding="utf-8")


ROW_PATCH_METHODS = ("sparse", "random", "fisher", "gradient")
"""The row methods whose delta.safetensors holds every change training made (``sparse_merged`` also set the merged
words' embedding rows, which it does not hold)."""
PATCH_METHODS = (*ROW_PATCH_METHODS, "lora")
"""The methods whose runs are a patch over their base model: the row methods' delta, LoRA's adapter."""


def _check_patch(folder: Path, record: dict[str, Any]) -> None:
    method = record.get("method")
    if method not in PATCH_METHODS:
        raise ExportError(f"{folder} is a {method or 'unrecorded'} run: only the row methods' and LoRA's runs "
                          f"({', '.join(PATCH_METHODS)}) are a patch over their base model; load it whole.")
    if method == "lora" and not (folder / "lora_adapter" / "adapter_config.json").is_file():
        raise ExportError(f"{folder} predates LoRA runs keeping their adapter (lora_adapter/): load the run whole, "
                          "or train it again (clm-explore rerun).")


def apply_delta(run: Any, base: str | None = None) -> Any:
    """The run's model rebuilt from its base model and its patch: a row method's delta.safetensors (the trained rows'
    changes, and the head, norms and biases that trained whole) or a LoRA run's adapter, merged: what the run is, as a
    patch of a few MB over a public model. ``base``: the base model's source (default: the one the run recorded).
    Returns a ``LoadedModel`` with the run's labels and its tokenizer.

    Raises:
        ExportError: the run is not a row method's or LoRA's, or its patch predates what it needs (older runs).
        ModelSourceError: the run or the base cannot be loaded.
    """
    from clm_explore.modeling import LoadedModel, finished_run, load_model, load_tokenizer

    folder = finished_run(run_folder(run))
    record = read_json_object(folder / "clm_run.json") or read_json_object(folder / EXPORT_RECORD).get("patch") or {}
    _check_patch(folder, record)
    labels = [str(v) for _, v in sorted(read_json_object(folder / "config.json")["id2label"].items(),
                                         key=lambda item: int(item[0]))]
    loaded = load_model(base or str(record.get("source") or "default"), labels)
    if record["method"] == "lora":
        model = _merge_lora(loaded.model, folder / "lora_adapter")
    else:
        model = _apply_rows(loaded.model, folder)
    setattr(model.config, TRAINED_LENGTH_KEY, trained_max_length(folder))  # predict reads what it trained at
    return LoadedModel(model.eval(), load_tokenizer(str(folder)), loaded.source, loaded.is_decoder)


def _merge_lora(model: Any, adapter: Path) -> Any:
    from peft import PeftModel

    from clm_explore.baselines import quiet_peft

    with quiet_peft():
        return PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()


def _apply_rows(model: Any, folder: Path) -> Any:
    import torch
    from safetensors.torch import load_file

    from clm_explore.training import WHOLE_PREFIX

    delta = load_file(folder / "delta.safetensors")
    if not any(name.startswith(WHOLE_PREFIX) for name in delta):
        raise ExportError(f"{folder}'s delta.safetensors predates the head and norms being kept in it: load the run "
                          "whole, or train it again (clm-explore rerun).")
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, rows in ((n.removesuffix(".rows"), t) for n, t in delta.items() if n.endswith(".rows")):
            weight = params[f"{name}.weight"]
            weight[rows] += delta[f"{name}.delta_w"].to(weight.dtype)
            if f"{name}.delta_b" in delta:
                params[f"{name}.bias"][rows] += delta[f"{name}.delta_b"].to(weight.dtype)
        for name, tensor in delta.items():
            if name.startswith(WHOLE_PREFIX):
                target = params[name.removeprefix(WHOLE_PREFIX)]
                target.copy_(tensor.to(target.dtype))
    return model
