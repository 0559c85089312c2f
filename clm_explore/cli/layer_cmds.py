"""``clm-explore layers`` (how alike two models' representations are, layer by layer) and ``clm-explore heads``
(what each attention head reads in a text, beside the share of its rows the run's mask selected)."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from clm_explore.cli import UserError, checked_max_length, checked_texts, print_json

MIN_CKA_ROWS = 10
"""``layer_views.MIN_CKA_ROWS``, here so that --help loads no torch."""

if TYPE_CHECKING:
    from clm_explore.layer_views import HeadAttention


def register(subparsers: Any) -> None:
    """Add the ``layers`` and ``heads`` sub-commands."""
    layers = subparsers.add_parser(
        "layers",
        help="how alike a run's layer representations are to its base model's (or another run's)",
        description="Debiased linear CKA (Kornblith et al., 2019) between two models' mean-pooled token states after "
        "each layer, over the same texts: 1 = the same representation up to rotation and scale, about 0 = unrelated, "
        "lower = training changed what the layer computes. Layers as the masks count them: emb (the embeddings' "
        "output), 0, 1, ... Default: the run against the base model it was trained from, on its test rows.",
    )
    layers.add_argument("--run", required=True, metavar="DIR", help="a run folder or a run id of the registry")
    other = layers.add_mutually_exclusive_group()
    other.add_argument("--vs", default=None, metavar="B", help="compare with this run (of the same depth) instead")
    other.add_argument("--base", default=None, metavar="SRC",
                       help="the base model (default: the one the run was trained from, in its clm_run.json)")
    layers.add_argument("--file", default=None, metavar="F",
                        help="texts to compare on: a data file's text column, a .txt file or '-' (standard input), one "
                        "text per line (default: the run's test rows)")
    layers.add_argument("--text-col", default=None, help="text column of --file (detected when omitted)")
    layers.add_argument("--max-rows", type=int, default=512,
                        help=f"texts compared at most (a seeded sample; at least {MIN_CKA_ROWS})")
    layers.add_argument("--json", action="store_true",
                        help='print {"run", "other", "rows", "notes", "layers": [{"layer" (-1: the embeddings), "cka"}]}')
    layers.set_defaults(func=run_layers)

    heads = subparsers.add_parser(
        "heads",
        help="what each attention head reads in a text, and which heads the run's mask trained",
        description="Per layer and attention head: the attention the text's tokens give the run's mined task "
        "tokens, and the share of the head's query, key and value rows the run's mask selected (row methods).",
    )
    heads.add_argument("--run", required=True, metavar="DIR", help="a run folder or a run id of the registry")
    heads.add_argument("--text", required=True, metavar="T", help="the text")
    heads.add_argument("--groups-from", default=None, metavar="RUN",
                       help="a run whose mined task tokens mark the text when --run mined none (full finetuning, LoRA)")
    heads.add_argument("--max-length", type=int, default=None,
                       help="sub-tokens read, 8-512 (default: the length the run trained with)")
    heads.add_argument("--json", action="store_true",
                       help="print JSON: tokens, task_positions, task_share, heads (layer, head, task_attention, "
                       "selected), notes")
    heads.set_defaults(func=run_heads)


def run_layers(args: argparse.Namespace) -> int:
    from clm_explore.cli.explain_cmds import checked_run
    from clm_explore.cli.method_cmds import texts_from_file
    from clm_explore.layer_views import layer_similarity

    if args.max_rows < MIN_CKA_ROWS:
        raise UserError(f"--max-rows must be at least {MIN_CKA_ROWS} (CKA compares texts with each other); got "
                        f"{args.max_rows}.")
    run = checked_run(args.run, "--run")
    other = checked_run(args.vs, "--vs")
    texts = texts_from_file(args.file, args.text_col) if args.file else None
    result = layer_similarity(run, other, texts=texts, max_rows=args.max_rows, source=args.base)
    if args.json:
        print_json(result.to_record())
        return 0
    from clm_explore.changes import layer_names

    shown = result.table.assign(layer=layer_names(result.table["layer"]))
    print(shown.to_string(index=False, formatters={"cka": "{:.4f}".format}))
    print(f"{args.run} vs {args.vs or result.other}: {result.summary()}")
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    return 0


def run_heads(args: argparse.Namespace) -> int:
    from clm_explore.cli.explain_cmds import checked_run
    from clm_explore.layer_views import head_attention

    run = checked_run(args.run, "--run")
    checked_texts([args.text], purpose="read", has_file=False)  # a text not UTF-8 failed deep in the tokenizer with a traceback
    groups_from = checked_run(args.groups_from, "--groups-from")
    result = head_attention(run, args.text, checked_max_length(args.max_length, run), groups_from=groups_from)
    if args.json:
        print_json(result.to_record())
        return 0
    print(format_heads(result))
    return 0


def format_heads(result: HeadAttention) -> str:
    """The tokens (task tokens starred), then a layer x head grid: the attention given to the task tokens, and in
    brackets the share of the head's rows the mask selected."""
    task = set(result.task_positions)
    lines = ["tokens: " + " ".join(f"*{t}*" if i in task else t for i, t in enumerate(result.tokens))]
    lines += [f"note: {note}" for note in result.notes]
    layers, heads = result.task_attention.shape
    masked = result.selected is not None
    if not task and not masked:
        hint = (" (this run mined none: --groups-from RUN marks them with another run's)"
                if any("no mined task tokens" in note for note in result.notes) else "")
        return "\n".join([*lines, f"No mined task token in this text{hint} and no row mask in this run: nothing per "
                                   "head to show."])
    if not task:
        lines.append("No mined task token in this text: the grid shows only the mask's share of each head's rows.")
        lines.append("Per head, the share of its query, key and value rows the mask selected:")
    else:
        lines.append(f"Attention given to the task tokens (*...*), per head; a head spreading evenly gives them "
                     f"{result.task_share:.0%}" + ("; in brackets the share of the head's query, key and value rows "
                                                     "the mask selected" if masked else "") + ":")
    lines.append("layer " + "".join(f"{f'head {h}':>10}" for h in range(heads)))
    for layer in range(layers):
        cells = []
        for h in range(heads):
            share = result.task_attention[layer, h]
            cell = "-" if share != share else f"{share:.0%}"  # NaN: the text has no task tokens
            if masked:
                cell += f" ({result.selected[layer, h]:.0%})"  # type: ignore[index]
            cells.append(f"{cell:>10}")
        lines.append(f"{layer:<6}" + "".join(cells))
    return "\n".join(lines)
