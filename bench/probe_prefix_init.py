"""What a prefix does to the features before any training step: a linear probe on the pooled state the head reads.

    python bench/probe_prefix_init.py [--data ../shared/data/snips] [--rows 700] [--tokens 16]

Fits scikit-learn's logistic regression on the pooled states of ``--rows`` training rows and scores it on as many
test rows, for the default model without a prefix and with a 16-token prefix from peft started three ways:
'random' (peft's default draws), 'zero' (``init_weights="zero"``: ``finetune --prefix-init zero``) and
'activations' (each layer's key and value outputs for the first sub-tokens of the training texts run together,
the real-activation start of the prefix-tuning paper). A start that moves the features far from the backbone's
leaves the warmed head reading something else at its first step.
"""

from __future__ import annotations

import argparse

import pandas as pd
import torch
from peft import PrefixTuningConfig, TaskType, get_peft_model
from sklearn.linear_model import LogisticRegression

from clm_explore.baselines import _accept_prefix_cache
from clm_explore.modeling import head_module_names, load_model


def pooled(model: torch.nn.Module, tokenizer, texts: list[str], max_length: int = 64) -> torch.Tensor:
    """What the classification head receives, for every text."""
    seen: list[torch.Tensor] = []
    head = next(m for n, m in model.named_modules() if n.endswith("classifier"))
    hook = head.register_forward_pre_hook(lambda _, args: seen.append(args[0].detach()))
    with torch.no_grad():
        for i in range(0, len(texts), 64):
            model(**tokenizer(texts[i : i + 64], padding=True, truncation=True, max_length=max_length,
                              return_tensors="pt"))
    hook.remove()
    return torch.cat(seen)


def real_activations(model: torch.nn.Module, tokenizer, texts: list[str], tokens: int) -> torch.Tensor:
    """Each layer's key and value outputs for ``[CLS]`` and the next sub-tokens of ``texts`` run together, in
    peft's prefix layout (per token: layer 0's key, layer 0's value, layer 1's key, ...)."""
    ids = tokenizer(" ".join(texts), add_special_tokens=False)["input_ids"][: tokens - 1]
    ids = torch.tensor([[tokenizer.cls_token_id, *ids]])
    outputs: dict[tuple[int, int], torch.Tensor] = {}
    hooks = []
    for name, module in model.named_modules():
        if name.endswith(("attention.self.key", "attention.self.value")):
            layer, kind = int(name.split("layer.")[1].split(".")[0]), int(name.endswith("value"))
            hooks.append(module.register_forward_hook(
                lambda _, __, out, at=(layer, kind): outputs.__setitem__(at, out[0].detach())))
    with torch.no_grad():
        model(input_ids=ids, attention_mask=torch.ones_like(ids))
    for hook in hooks:
        hook.remove()
    layers = 1 + max(layer for layer, _ in outputs)
    return torch.cat([outputs[(layer, kind)] for layer in range(layers) for kind in (0, 1)], dim=-1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="../shared/data/snips")
    parser.add_argument("--rows", type=int, default=700)
    parser.add_argument("--tokens", type=int, default=16)
    args = parser.parse_args()
    torch.set_num_threads(1)
    train = pd.read_csv(f"{args.data}/train.csv").sample(args.rows, random_state=0)
    test = pd.read_csv(f"{args.data}/test.csv").sample(min(args.rows, 1000), random_state=0)
    labels = sorted(train["label"].unique())

    def probe(model: torch.nn.Module, tokenizer) -> float:
        fit = LogisticRegression(max_iter=2000).fit(pooled(model, tokenizer, train["text"].tolist()), train["label"])
        return fit.score(pooled(model, tokenizer, test["text"].tolist()), test["label"])

    print(f"| prefix start | probe accuracy ({args.rows} rows of {args.data}) |\n|---|---|")
    loaded = load_model("default", labels)
    print(f"| none | {probe(loaded.model, loaded.tokenizer):.4f} |", flush=True)
    for start in ("random", "zero", "activations"):
        loaded = load_model("default", labels)
        _accept_prefix_cache(loaded.model)
        real = real_activations(loaded.model, loaded.tokenizer, train["text"].tolist(), args.tokens) \
            if start == "activations" else None
        config = PrefixTuningConfig(task_type=TaskType.SEQ_CLS, num_virtual_tokens=args.tokens,
                                    modules_to_save=head_module_names(loaded.model),
                                    init_weights="zero" if start == "zero" else None)
        model = get_peft_model(loaded.model, config)
        if real is not None:
            model.prompt_encoder["default"].embedding.weight.data.copy_(real)
        print(f"| {start} | {probe(model, loaded.tokenizer):.4f} |", flush=True)


if __name__ == "__main__":
    main()
