"""Names of models and of their weight maps, without torch: the model sources given by name, the error a source
raises, which kind of map (query, key, feed-forward ...) a parameter is, and whether a folder's head was ever
trained. Light on purpose: a command that only
reads a run folder (``card``) imports these without torch and transformers, which took it 7.5 s and 500 MB."""

from __future__ import annotations

import json
import re
from pathlib import Path

DEFAULT_SOURCE = "default"
TINY_SOURCE = "tiny-random"
SMOLLM2_SOURCE = "smollm2"
NAMED_SOURCES = (DEFAULT_SOURCE, TINY_SOURCE, SMOLLM2_SOURCE)
"""Model sources given by name (packages, or built from a config), not paths."""


class ModelSourceError(RuntimeError):
    """A model source cannot be resolved or loaded; the message says how to fix it."""


ATTENTION_KEY = r"attention\.self\.key(_proj)?$|self_attn\.k_proj$|attention\.attn\.k$|attention\.k_lin$"
"""Module names of the attention key maps (BERT and RoBERTa, Llama-style decoders, MPNet, DistilBERT, DeBERTa)."""


MODULE_PATTERNS = (  # BERT and RoBERTa, Llama-style decoders, MPNet (attention.attn.q), DistilBERT (q_lin, ffn.lin1),
    # DeBERTa (attention.self.query_proj)
    (r"attention\.self\.query(_proj)?$|self_attn\.q_proj$|attention\.attn\.q$|attention\.q_lin$", "q"),
    (ATTENTION_KEY, "k"),
    (r"attention\.self\.value(_proj)?$|self_attn\.v_proj$|attention\.attn\.v$|attention\.v_lin$", "v"),
    (r"attention\.output\.dense$|self_attn\.o_proj$|attention\.attn\.o$|attention\.out_lin$", "o"),
    (r"intermediate\.dense$|mlp\.up_proj$|ffn\.lin1$", "ffn_in"),
    (r"mlp\.gate_proj$", "ffn_gate"),
    (r"(?<!attention\.)output\.dense$|mlp\.down_proj$|ffn\.lin2$", "ffn_out"),
    (r"pooler\.dense$", "pooler"),
)
MODULE_ORDER = ["embeddings", "q", "k", "v", "o", "ffn_in", "ffn_gate", "ffn_out", "pooler"]

LAYER_RE = re.compile(r"\blayers?\.(\d+)\.(.+?)(?:\.weight)?$")
"""A parameter name's layer and module (``...layer.3.attention.self.query.weight``)."""


def classify_linear(name: str) -> tuple[int, str] | None:
    """(layer, module) of a linear map's module name, or None when it is not a scored map."""
    for pattern, module in MODULE_PATTERNS:
        if re.search(pattern, name):
            if module == "pooler":
                return -2, module  # layer filled in by the caller (n_layers)
            found = re.search(r"layers?\.(\d+)\.", name)
            return (int(found.group(1)), module) if found else None
    return None


UNTRAINED_HEAD = ("it has no clm_run.json and its head names no labels (LABEL_0, LABEL_1, ...): a base model whose "
                  "head was never trained. Pass the folder finetune wrote.")


def has_untrained_head(folder: Path) -> bool:
    """A model folder that finetune did not write (no clm_run.json) whose head names no labels (LABEL_0, LABEL_1,
    ...): a base model with a head never trained, whose predictions would mean nothing."""
    if (folder / "clm_run.json").is_file():
        return False
    try:
        labels = json.loads((folder / "config.json").read_text()).get("id2label") or {}
    except (OSError, ValueError, AttributeError):
        labels = {}
    return unnamed_labels(labels)


def unnamed_labels(id2label: dict | None) -> bool:
    """A head whose labels are transformers' placeholders (LABEL_0, LABEL_1, ...) or none: one never trained."""
    return not id2label or all(re.fullmatch(r"LABEL_\d+", str(v)) for v in id2label.values())
