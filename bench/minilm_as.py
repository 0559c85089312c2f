"""Write the default model (all-MiniLM-L6-v2, BERT) as a DistilBERT or a DeBERTa-v2 folder computing the same encoder.

No DistilBERT or DeBERTa weights can be installed here, so this is how those architectures' support is measured on
pretrained weights: the same maps under the other architecture's names (DistilBERT has no token types, so type 0's
embedding is folded into the position embeddings; DeBERTa-v2 runs without relative attention, which makes it BERT).
The script checks that the first token's final state matches BERT's before it saves. The classification head is
the other architecture's own, new: DistilBERT's ``pre_classifier`` + ``classifier``, DeBERTa's ``pooler`` +
``classifier``.

    .venv/bin/python bench/minilm_as.py distilbert /tmp/minilm-distilbert
    .venv/bin/python bench/minilm_as.py deberta /tmp/minilm-deberta
"""

from __future__ import annotations

import argparse

import torch
from transformers import (
    AutoModel,
    AutoTokenizer,
    DebertaV2Config,
    DebertaV2ForSequenceClassification,
    DistilBertConfig,
    DistilBertForSequenceClassification,
)

from clm_explore.modeling import default_model_path

BERT_LAYER = {  # BERT layer name -> (DistilBERT name, DeBERTa-v2 name)
    "attention.self.query": ("attention.q_lin", "attention.self.query_proj"),
    "attention.self.key": ("attention.k_lin", "attention.self.key_proj"),
    "attention.self.value": ("attention.v_lin", "attention.self.value_proj"),
    "attention.output.dense": ("attention.out_lin", "attention.output.dense"),
    "attention.output.LayerNorm": ("sa_layer_norm", "attention.output.LayerNorm"),
    "intermediate.dense": ("ffn.lin1", "intermediate.dense"),
    "output.dense": ("ffn.lin2", "output.dense"),
    "output.LayerNorm": ("output_layer_norm", "output.LayerNorm"),
}


def convert(kind: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(BERT encoder, the same weights as a ``kind`` sequence classifier with a new head)."""
    bert = AutoModel.from_pretrained(default_model_path()).eval()
    c = bert.config
    state = bert.state_dict()
    if kind == "distilbert":
        config = DistilBertConfig(vocab_size=c.vocab_size, dim=c.hidden_size, n_layers=c.num_hidden_layers,
                                  n_heads=c.num_attention_heads, hidden_dim=c.intermediate_size,
                                  max_position_embeddings=c.max_position_embeddings, activation=c.hidden_act,
                                  pad_token_id=c.pad_token_id)
        model, layers, pick = DistilBertForSequenceClassification(config), "transformer.layer", 0
        words = {"embeddings.word_embeddings.weight": state["embeddings.word_embeddings.weight"],
                 "embeddings.position_embeddings.weight": state["embeddings.position_embeddings.weight"]
                 + state["embeddings.token_type_embeddings.weight"][0]}
    else:
        config = DebertaV2Config(vocab_size=c.vocab_size, hidden_size=c.hidden_size, num_hidden_layers=c.num_hidden_layers,
                                 num_attention_heads=c.num_attention_heads, intermediate_size=c.intermediate_size,
                                 max_position_embeddings=c.max_position_embeddings, hidden_act=c.hidden_act,
                                 type_vocab_size=c.type_vocab_size, relative_attention=False, position_biased_input=True,
                                 pos_att_type=[], layer_norm_eps=c.layer_norm_eps, pad_token_id=c.pad_token_id)
        model, layers, pick = DebertaV2ForSequenceClassification(config), "encoder.layer", 1
        words = {f"embeddings.{k}.weight": state[f"embeddings.{k}.weight"]
                 for k in ("word_embeddings", "position_embeddings", "token_type_embeddings")}
    new = dict(words)
    new["embeddings.LayerNorm.weight"] = state["embeddings.LayerNorm.weight"]
    new["embeddings.LayerNorm.bias"] = state["embeddings.LayerNorm.bias"]
    for i in range(c.num_hidden_layers):
        for name, targets in BERT_LAYER.items():
            for p in ("weight", "bias"):
                new[f"{layers}.{i}.{targets[pick]}.{p}"] = state[f"encoder.layer.{i}.{name}.{p}"]
    backbone = model.distilbert if kind == "distilbert" else model.deberta
    missing, unexpected = backbone.load_state_dict(new, strict=False)
    missing = [m for m in missing if "position_ids" not in m]
    if missing or unexpected:
        raise SystemExit(f"conversion left missing {missing} unexpected {unexpected}")
    return bert, model.eval()


@torch.no_grad()
def check(bert: torch.nn.Module, model: torch.nn.Module, kind: str) -> float:
    """Largest |difference| of the first token's final state over a few texts."""
    tok = AutoTokenizer.from_pretrained(default_model_path())
    enc = tok(["my card has not arrived yet", "how do I top up by bank transfer?", "hi"], padding=True,
              return_tensors="pt")
    want = bert(**enc).last_hidden_state[:, 0]
    backbone = model.distilbert if kind == "distilbert" else model.deberta
    got = backbone(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state[:, 0]
    return float((want - got).abs().max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("kind", choices=["distilbert", "deberta"])
    parser.add_argument("out")
    args = parser.parse_args()
    bert, model = convert(args.kind)
    diff = check(bert, model, args.kind)
    print(f"largest |difference| of the first token's state against BERT: {diff:.2e}")
    if diff > 1e-4:
        raise SystemExit("the converted encoder does not compute BERT's states")
    model.save_pretrained(args.out)
    AutoTokenizer.from_pretrained(default_model_path()).save_pretrained(args.out)
    print(f"saved {args.kind} to {args.out}")


if __name__ == "__main__":
    main()
