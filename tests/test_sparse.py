"""Row deltas: the wrapped forward equals the merged module's, gradients reach only the deltas."""

from __future__ import annotations

import copy

import torch
from torch import nn

from clm_explore.modeling import count_parameters, load_model
from clm_explore.sparse import DeltaEmbedding, DeltaLinear, attach_deltas, delta_state, merge_deltas

ROWS = torch.tensor([1, 4])


def frozen(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def test_delta_linear_forward_equals_merged_linear_and_only_deltas_get_gradients():
    base = frozen(nn.Linear(3, 5))
    wrapper = DeltaLinear(base, ROWS)
    assert torch.equal(wrapper.delta_w, torch.zeros(2, 3)) and torch.equal(wrapper.delta_b, torch.zeros(2))
    x = torch.randn(2, 7, 3)
    assert torch.equal(wrapper(x), base(x))  # zero deltas: nothing changes
    with torch.no_grad():
        wrapper.delta_w.copy_(torch.randn(2, 3))
        wrapper.delta_b.copy_(torch.randn(2))
    reference = nn.Linear(3, 5)  # base weights plus the deltas written into rows 1 and 4 by hand
    with torch.no_grad():
        reference.weight.copy_(base.weight)
        reference.bias.copy_(base.bias)
        reference.weight[ROWS] += wrapper.delta_w
        reference.bias[ROWS] += wrapper.delta_b
    y = wrapper(x)
    torch.testing.assert_close(y, reference(x))

    y.pow(2).sum().backward()
    reference(x).pow(2).sum().backward()
    assert base.weight.grad is None and base.bias.grad is None
    # d/d delta = the full weight gradient's selected rows.
    torch.testing.assert_close(wrapper.delta_w.grad, reference.weight.grad[ROWS])
    torch.testing.assert_close(wrapper.delta_b.grad, reference.bias.grad[ROWS])

    merged = copy.deepcopy(wrapper).merge()
    assert type(merged) is nn.Linear
    torch.testing.assert_close(merged(x), y.detach())
    unselected = [0, 2, 3]
    assert torch.equal(merged.weight[unselected], base.weight[unselected])


def test_delta_embedding_forward_equals_merged_embedding_and_only_deltas_get_gradients():
    base = frozen(nn.Embedding(6, 4))
    wrapper = DeltaEmbedding(base, ROWS)
    ids = torch.tensor([[0, 1, 4, 4], [5, 1, 2, 3]])
    assert torch.equal(wrapper(ids), base(ids))
    assert wrapper.weight is base.weight
    with torch.no_grad():
        wrapper.delta_w.copy_(torch.randn(2, 4))
    reference = nn.Embedding(6, 4)
    with torch.no_grad():
        reference.weight.copy_(base.weight)
        reference.weight[ROWS] += wrapper.delta_w
    out = wrapper(ids)
    torch.testing.assert_close(out, reference(ids))

    (out * torch.arange(4.0)).sum().backward()
    (reference(ids) * torch.arange(4.0)).sum().backward()
    assert base.weight.grad is None
    torch.testing.assert_close(wrapper.delta_w.grad, reference.weight.grad[ROWS])  # row 4 seen twice: 2x

    merged = copy.deepcopy(wrapper).merge()
    assert type(merged) is nn.Embedding
    torch.testing.assert_close(merged(ids), out.detach())


def test_attach_and_merge_on_the_tiny_model():
    loaded = load_model("tiny-random", ["a", "b"])
    model = frozen(loaded.model)
    model.eval()
    n_params = count_parameters(model)
    keys = set(model.state_dict())
    ids = loaded.tokenizer(["my card is lost", "exchange rate please"], return_tensors="pt", padding=True)
    before = model(**ids).logits
    q = "bert.encoder.layer.1.attention.self.query.weight"
    emb = "bert.embeddings.word_embeddings.weight"
    card = loaded.tokenizer.convert_tokens_to_ids("card")
    masks = {q: torch.zeros(32, dtype=torch.bool), emb: torch.zeros(model.config.vocab_size, dtype=torch.bool)}
    masks[q][[3, 7]] = True
    masks[emb][card] = True

    wrappers = attach_deltas(model, masks)
    assert isinstance(model.bert.encoder.layer[1].attention.self.query, DeltaLinear)
    assert isinstance(model.get_input_embeddings(), DeltaEmbedding)
    trainable = {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}
    assert sum(trainable.values()) == 2 * 33 + 32  # two query rows (weight + bias) and one embedding row
    assert all("delta" in n for n in trainable)
    torch.testing.assert_close(model(**ids).logits, before)  # zero deltas change nothing

    with torch.no_grad():
        for w in wrappers.values():
            w.delta_w.normal_()
    changed = model(**ids).logits.detach()
    state = delta_state(wrappers)
    assert state["bert.encoder.layer.1.attention.self.query.rows"].tolist() == [3, 7]
    assert state["bert.embeddings.word_embeddings.rows"].tolist() == [card]
    assert state["bert.encoder.layer.1.attention.self.query.delta_w"].shape == (2, 32)

    merge_deltas(model, wrappers)
    assert type(model.bert.encoder.layer[1].attention.self.query) is nn.Linear
    assert type(model.get_input_embeddings()) is nn.Embedding
    assert count_parameters(model) == n_params
    assert set(model.state_dict()) == keys
    torch.testing.assert_close(model(**ids).logits, changed)
