"""Widgets -> config dataclasses (defaults read from the dataclasses), plus the shared sidebar."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import streamlit as st

from clm_explore.config import (
    BUDGET_METHODS,
    FEW_SHOT_EPOCHS,
    FEW_VALIDATION_ROWS,
    FISHER_LABELS,
    HEAD_INITS,
    MAX_SEED,
    METHODS,
    RELEVANCES,
    SCHEDULES,
    SCORES,
    SPECIFICITIES,
    DataConfig,
    FinetuneConfig,
    MaskConfig,
    MiningConfig,
    SensitivityConfig,
    few_steps_note,
)
from clm_explore.data import AnnotatedData, DataError
from clm_explore.datareport import plural, row_points
from clm_explore.mining import AUTO_LANGUAGE, LANGUAGE_NAMES, background_languages
from clm_explore.modeling import DEFAULT_SOURCE, TINY_SOURCE
from clm_explore.training import DEFAULT_LR
from clm_explore.ui import cache, saved_session, state, views
from clm_explore.ui.cache import LENGTH_COUNTED
from clm_explore.ui.views import KEEP_SIDES, KEEP_START, LONG_TEXTS_KEEP, escape_markdown

SOURCES = ("default", "tiny-random", "local folder…")
BUDGET_STEPS = [float(f"{x:.3g}") for x in np.logspace(-4, -1, 31)]
"""Log-spaced budgets from 0.01% to 10% (fractions)."""
HEAD_START_NAMES = {"loaded": "as loaded", "centroid": "label centroids"}
FISHER_LABEL_NAMES = {"data": "annotated", "model": "drawn from the model"}


MODEL_NAMES = {"default": "all-MiniLM-L6-v2", "tiny-random": "a 2-layer random BERT: runs score near chance"}
"""What the sidebar says a named source is (a folder is its path)."""


def model_shown(source: str) -> str:
    """The sidebar's name of a model source: 'default (all-MiniLM-L6-v2)', a folder as its path."""
    return f"{source} ({MODEL_NAMES[source]})" if source in MODEL_NAMES else source


def sidebar() -> None:
    """Model source, current data set and device, on every page."""
    with st.sidebar:
        current = state.model_source()
        pick = current if current in SOURCES[:2] else SOURCES[2]
        choice = st.selectbox(
            "Model source",
            SOURCES,
            index=SOURCES.index(pick),
            key="side_source",
            help="'default': all-MiniLM-L6-v2; 'tiny-random': a 2-layer random BERT for demos.",
        )
        if choice == SOURCES[2]:
            folder = st.text_input(
                "Model folder (on the server)", value="" if pick != SOURCES[2] else current, key="side_folder"
            )
            refused = (state.refused_model_source(folder) or cache.unsupported_model(folder)
                       if folder and folder != current else "")
            if refused:  # the page goes on with the model it had: say so beside the refusal
                st.error(escape_markdown(f"{refused} Still using {current}."))
            elif folder and folder != current:
                state.set_model_source(folder)
        elif choice != current:
            state.set_model_source(choice)
        data = state.data_choice()
        st.caption(f"**Model:** {escape_markdown(model_shown(state.model_source()))}")
        st.caption(f"**Data:** {escape_markdown(data.shown) if data else 'none (pick one on the Data page)'}")
        st.caption(f"**Device:** {device_label()}")
        with st.expander("This session"):
            st.caption("This page's address reopens the session, upload included, for whoever has it. Ending it "
                       "deletes its upload and saved choices from the server; its runs stay, listed for everyone. "
                       "A reload gives the session a new address: the earlier ones keep their own copy until "
                       "unused for the days the server keeps sessions.")
            sure = st.checkbox("Delete its upload and saved choices", key="side_end_confirm")
            st.button("End this session", key="side_end_session", on_click=saved_session.end_this_session,
                      disabled=not sure)


def device_label() -> str:
    import torch

    if torch.cuda.is_available():
        return f"GPU {torch.cuda.get_device_name(0)}"
    threads = torch.get_num_threads()
    return f"CPU ({threads} thread{'s' if threads != 1 else ''})"


def default_device() -> str:
    """Where jobs run: the first GPU when present, else the CPU (``CLM_EXPLORE_DEVICE`` overrides; one this machine
    lacks is logged at start and left out)."""
    from clm_explore.doctor import job_device

    return job_device()


def recorded_device() -> str:
    """The device a run launched here records: ``CLM_EXPLORE_DEVICE`` where set, else 'auto' as the CLI records it,
    which resolves to ``default_device()`` on this server. The device it resolved to was recorded before, so that
    `clm-explore rerun` of an app run stayed on the CPU on a machine with a GPU (the faces review)."""
    from clm_explore.doctor import device_setting

    return device_setting()[0] or "auto"


def mining_form(key: str = "tok") -> MiningConfig:
    """Mining options; submitting stores them in the session (the Tokens, Sensitivity and Budget pages share them)."""
    cfg = state.mining_cfg()
    with st.expander("Mining options"), st.form(f"{key}_form"):
        c1, c2, c3 = st.columns(3)  # one st.columns per row: Tab then walks the boxes row by row, as they read
        relevance = c1.selectbox(
            "Relevance",
            RELEVANCES,
            index=RELEVANCES.index(cfg.relevance),
            key=f"{key}_relevance",
            help="How strongly a group points to labels: kl (divergence of the labels where it occurs from the "
            "labels overall), mi (mutual information) or chi2.",
        )
        specificity = c2.selectbox(
            "Specificity",
            SPECIFICITIES,
            index=SPECIFICITIES.index(cfg.specificity),
            key=f"{key}_spec",
            help="How much more often a group occurs in this data than in everyday text of its language (word "
            "frequencies of the wordfreq package); 'none' ranks by relevance alone.",
        )
        min_count = c3.number_input("Min rows", 1, 1000, cfg.min_count, key=f"{key}_min_count",
                                    help="A group must occur in at least this many training rows.")
        c1, c2, c3 = st.columns(3)
        max_words = c1.number_input("Max words per group", 1, 4, cfg.max_words, key=f"{key}_max_words",
                                    help="Longest run of words mined as one group.")
        min_chars = c3.number_input("Shortest fragment (characters)", 1, 20, cfg.fragment_min_chars,
                                    key=f"{key}_min_chars", help="A word fragment (a piece inside words, such as "
                                    "'##ing') is kept only if it reads at least this many characters: 3 leaves out "
                                    "endings such as '##s' and letters of names.")
        top_k = c2.number_input("Groups kept (0 = auto)", 0, 5000, cfg.top_k, key=f"{key}_top_k",
                                help="How many of the best-scored groups are kept (0: scales with the rows, "
                                "64 to 1,024); their positions restrict the sensitivity scores.")
        languages = [AUTO_LANGUAGE, *background_languages()]
        background_lang = c2.selectbox(
            "Background language", languages,
            index=languages.index(cfg.background_lang) if cfg.background_lang in languages else 0,
            format_func=lambda code: "auto (detected from the texts)" if code == AUTO_LANGUAGE else
            f"{LANGUAGE_NAMES.get(code, code)} ({code})", key=f"{key}_background_lang",
            help="The language whose everyday word frequencies specificity compares with, and whose commonest words "
            "('the', 'für') may not start or end a group: detected from the training texts, or chosen.")
        share = c1.number_input("Lowest score kept (share of the best)", 0.0, 0.99, cfg.min_score_share, step=0.01,
                                format="%.2f", key=f"{key}_min_share",
                                help="Keep a group only if its score is at least this share of the best group's. "
                                "With few rows every candidate is kept, common words such as 'in' and 'from' "
                                "too; on a few hundred rows 0.03 leaves the commonest out.")
        if st.form_submit_button("Mine task tokens"):
            cfg = dataclasses.replace(
                cfg,
                relevance=relevance,
                specificity=specificity,
                min_count=int(min_count),
                max_words=int(max_words),
                top_k=int(top_k),
                fragment_min_chars=int(min_chars),
                min_score_share=float(share),
                background_lang=background_lang,
            )
            state.put(state.MINING_CFG, cfg)
            saved_session.persist()  # now: a reload while it computes kept the old options (multi-session review)
    return cfg


def await_scores(source: str, choice: state.DataChoice, mining_cfg: MiningConfig, cfg: SensitivityConfig) -> None:
    """Stop the page while the scores for these settings are made (``cache.scores_task``, on a thread of its own),
    with how far they are and about how long is left; the page reruns when they are ready. Before, a page waited
    20-50 s under a spinner that said nothing of either (the UX review), and went blank at a click elsewhere."""
    task = cache.scores_task(source, choice, mining_cfg, cfg, inline=state.inline_jobs())  # a stopped one restarts
    if task.done:  # its scores, or its error, which the page's ``cache.sensitivity`` raises
        return
    views.task_progress(task)
    st.caption("Rows are scored once per data set, model and settings, for every session on this server, and kept: "
               "this page fills in when they are ready. The other pages stay open meanwhile.")
    state.stop()


def sensitivity_form(key: str = "sens") -> SensitivityConfig:
    cfg = scoring_cfg()
    with st.expander("Sensitivity options"), st.form(f"{key}_form"):
        c1, c2, c3, c4 = st.columns(4)  # one st.columns per row, so that Tab walks them as they read
        score = c1.selectbox(
            "Score", SCORES, index=SCORES.index(cfg.score), key=f"{key}_score",
            help="How a weight row's importance is measured: Fisher (mean squared per-example gradient, the "
            "default), Taylor (|weight x gradient|) or gradient magnitude.",
        )
        rows = c2.number_input("Calibration rows", 16, 100_000, cfg.calibration_rows, key=f"{key}_rows",
                               help="Training rows whose gradients are scored (more: steadier scores, slower).")
        warmup = c3.number_input("Head warm-up epochs", -1, 50, cfg.warmup_epochs, key=f"{key}_warmup",
                                 help="-1 = auto: 5, or 1 when the training split has fewer than 20 rows per label (few-shot)")
        head_init = c4.selectbox("Head start", HEAD_INITS, index=HEAD_INITS.index(cfg.head_init), key=f"{key}_head",
                                 format_func=HEAD_START_NAMES.get,
                                 help="where the warm-up starts: the head as loaded (seeded random), or each "
                                      "label's mean direction (the same for every seed)")
        c1, c2, _, _ = st.columns(4)
        labels = c1.selectbox("Fisher labels", FISHER_LABELS, index=FISHER_LABELS.index(cfg.fisher_labels),
                              key=f"{key}_labels", format_func=FISHER_LABEL_NAMES.get,
                              help="the labels of the Fisher score's gradients: the annotated ones (empirical "
                                   "Fisher) or drawn from the warmed-up head's predictions (true Fisher)")
        draws = c2.number_input("Label draws per row", 1, 16, cfg.label_draws, key=f"{key}_draws",
                                help="model labels only: one scoring pass per draw")
        if st.form_submit_button("Compute"):
            if labels == "model" and score != "fisher":
                st.error(f"Labels drawn from the model apply to the Fisher score only, not {score}; "
                         "the options were not changed.")
                return cfg
            cfg = dataclasses.replace(cfg, score=score, calibration_rows=int(rows), warmup_epochs=int(warmup),
                                      head_init=head_init, fisher_labels=labels, label_draws=int(draws))
            state.put(state.SENS_CFG, cfg)
            saved_session.persist()  # now: a reload while it computes kept the old options (multi-session review)
    return cfg


def _slider_steps(value: float) -> list[float]:
    """The slider's budgets with ``value`` among them: a budget typed in a box (5%, 20%, a count's 0.2201%) is where
    the slider stands, not the nearest step (the budget review: at 20% typed, the slider read 10%)."""
    value = _on_slider(value)
    return BUDGET_STEPS if value in BUDGET_STEPS else sorted([*BUDGET_STEPS, value])


def _on_slider(value: float) -> float:
    """``value`` as the slider holds it: a step where it is one but for float rounding (6.31% typed reads
    0.06309999999999999, and the slider showed two steps of 6.31%: the diff review)."""
    return next((step for step in BUDGET_STEPS if math.isclose(step, value, rel_tol=1e-9)), value)


def _budget_count(value: float, backbone_params: int) -> int:
    return max(1, round(value * backbone_params))  # as masks.budget_to_params counts a fraction


def _sync_from_slider(key: str) -> None:
    value = st.session_state[f"{key}_slider"]
    st.session_state[f"{key}_number"] = round(value * 100, 4)
    state.set_budget(value)


def _sync_from_number(key: str) -> None:
    _set_budget(key, st.session_state[f"{key}_number"] / 100)


def _sync_from_count(key: str, backbone_params: int) -> None:
    # A count is kept as the fraction it is of this model's backbone: the runs, the run names and the other pages
    # read a fraction, and round(fraction * backbone) gives the count back.
    _set_budget(key, st.session_state[f"{key}_count"] / backbone_params)


def _set_budget(key: str, value: float) -> None:
    """The budget at ``value`` (kept within the slider's lowest step and 1), the percent box and the slider at it."""
    value = min(max(value, BUDGET_STEPS[0]), 1.0)
    state.set_budget(value)
    st.session_state[f"{key}_number"] = round(value * 100, 4)  # the box shows the budget in use
    st.session_state[f"{key}_slider"] = _on_slider(value)


def budget_input(key: str = "budget", backbone_params: int | None = None) -> float:
    """A log-scale slider (0.01%..10%) and a number box (percent) kept in sync, and, given the model's backbone
    size, a box for the budget as a parameter count; returns a fraction."""
    value = state.budget()
    if f"{key}_slider" not in st.session_state:
        st.session_state[f"{key}_slider"] = _on_slider(value)
        st.session_state[f"{key}_number"] = round(value * 100, 4)
    # The count's box wide enough for 7 digits: at [4, 1, 1] a 10% budget's 2271322 read "227132" (the demo review).
    c1, c2, c3 = st.columns([3, 1, 1.4]) if backbone_params else (*st.columns([4, 1]), None)
    c1.select_slider(
        "Budget (share of backbone parameters, log scale)",
        options=_slider_steps(value),
        key=f"{key}_slider",
        format_func=lambda v: f"{v * 100:.3g}%",
        on_change=_sync_from_slider,
        args=(key,),
    )
    c2.number_input(
        "Budget %",
        min_value=BUDGET_STEPS[0] * 100,
        max_value=100.0,
        step=0.1,
        format="%.4g",
        key=f"{key}_number",
        on_change=_sync_from_number,
        args=(key,),
    )
    if c3 is not None:
        st.session_state[f"{key}_count"] = _budget_count(value, backbone_params)  # follows the slider and the box
        c3.number_input(
            "Budget (parameters)",
            min_value=_budget_count(BUDGET_STEPS[0], backbone_params),
            max_value=backbone_params,
            step=1000,
            key=f"{key}_count",
            on_change=_sync_from_count,
            args=(key, backbone_params),
            help=f"The budget as a count of this model's {backbone_params:,} backbone parameters (to compare with "
            "another method's trainable count); the runs take it as the share it is. Rows are bought whole, so the "
            "selected parameters below fall a little short of it.",
        )
    return state.budget()


def mask_options(n_layers: int, key: str = "budget") -> MaskConfig:
    """The row choice (lowest eligible layer, a share of random rows), kept in the session for the Budget page's
    selection and for every launch; returns it at the current budget."""
    cfg = state.mask_cfg()
    layers = [-1, *range(n_layers)]
    with st.expander("Row choice") as row_choice:
        c1, c2 = st.columns(2)
        min_layer = c1.selectbox(
            "Lowest eligible layer",
            layers,
            index=layers.index(cfg.min_layer) if cfg.min_layer in layers else 0,
            format_func=lambda v: f"auto: {n_layers // 2}, the upper half" if v == -1 else str(v),
            key=f"{key}_min_layer",
            help="No row below it is chosen. Backward stops at the lowest chosen row, so a lower layer means "
            "slower epochs; 0 also lets the mined tokens' word-embedding rows compete.",
        )
        share = c2.slider(
            "Random share of the budget",
            0.0,
            1.0,
            cfg.random_share,
            0.05,
            key=f"{key}_random_share",
            help="The top-scored rows fill the rest of the budget first, then rows drawn at random (seeded by the "
            "run) fill this share; 1 = random rows. In 10-shot, 0.5 landed halfway between the top rows (best "
            "on trec6 and hint3) and random rows (best on banking77 and snips; BENCHMARKS.md).",
        )
        if share:  # not applied with a random share: the box must not stay ticked (greyed) as if it were
            st.session_state[f"{key}_spread_heads"] = False
        spread = st.checkbox(
            "Spread the attention rows over the heads",
            cfg.spread_heads and not share,
            key=f"{key}_spread_heads",
            disabled=bool(share),
            help="Each query, key and value map keeps its share of the budget, but its rows are taken round-robin "
            "over the attention heads instead of its top rows, which crowd into one or two heads. On 10-shot test "
            "splits it lifted trec6's Fisher rows by 8 points and was level on banking77, snips and hint3 "
            "(BENCHMARKS.md). Top rows only: no random share.",
        )
    # the rest of MaskConfig keeps its defaults here (the budget review: the page said runs used "these options")
    row_choice.caption("The command line's other mask options (`--no-embeddings`, `--train-biases`, `--sample-temperature`, "
                       "`--cost-aware`) are not offered here: runs launched from the app take their defaults.")
    options = dataclasses.replace(cfg, min_layer=int(min_layer), random_share=float(share),
                                  spread_heads=bool(spread) and not share)
    state.put(state.MASK_OPTIONS, options)
    return options


def row_choice_label(cfg: MaskConfig) -> str:
    layer = "auto" if cfg.min_layer == -1 else str(cfg.min_layer)
    return f"lowest layer {layer}, random share {cfg.random_share:g}" + (", spread over heads" if cfg.spread_heads else "")


def rates_note() -> None:
    """Under a model other than the bundled ones: the default learning rates were chosen on the default model."""
    if state.model_source() in (DEFAULT_SOURCE, TINY_SOURCE):
        return
    st.caption("The methods' default learning rates were chosen on all-MiniLM-L6-v2, the default model; on another "
               "model they may be too high (on all-mpnet-base-v2 the row methods' 5e-3 diverged where 1e-3 "
               "trained). Set a rate in the Finetune form, or let `clm-explore bench --tune-lr` choose one. Runs "
               "launched from the Budget page take the defaults.")


def finetune_form(key: str = "ft", out_of_scope_labels: list[str] | None = None
                  ) -> tuple[str, FinetuneConfig, int] | None:
    """Method, budget, epochs, lr, seed, schedule, weight averaging, frozen-layer cache, cold head, weight decay, the
    best epoch kept and early stopping, how many seeds (and,
    when test has labels train never had, the abstention quantile); returns (run name, config, seeds) when Launch is
    pressed: ``seeds`` runs, at the config's seed and the ones after it."""
    defaults = FinetuneConfig()
    # Every option but the budget (the Budget page's, shared) and the run name keeps its value across page
    # switches: seeded from the kept copy (state.restore), so the widgets take no default of their own.
    kept_defaults = {
        "method": METHODS[0], "epochs": default_epochs(), "lr": defaults.lr, "seed": defaults.seed,
        "schedule": SCHEDULES[0], "average": defaults.average_last, "cache": defaults.cache_frozen_layers,
        "cold": not defaults.head_warmup, "decay": defaults.weight_decay, "seeds": 1, "best": defaults.keep_best,
        "patience": defaults.early_stop, "max_length": defaults.max_length, "keep": KEEP_START,
    }
    if out_of_scope_labels:
        kept_defaults["oos"] = defaults.out_of_scope_quantile
    options = {"method": METHODS, "schedule": SCHEDULES, "keep": list(KEEP_SIDES)}
    for option, value in kept_defaults.items():
        state.restore(f"{key}_{option}", value, options=options.get(option))
    rates_note()
    if few := data_steps_note(int(state.kept(f"{key}_epochs", defaults.epochs))):
        st.info(escape_markdown(f"{few[0].upper()}{few[1:]}: set Epochs to {FEW_SHOT_EPOCHS}."))
    with st.form(f"{key}_form"):
        c1, c2, c3 = st.columns(3)
        method = c1.selectbox(
            "Method",
            METHODS,
            key=f"{key}_method",
            help="'sparse' is ours; the others are baselines, at the same budget where the budget sizes them "
            f"({', '.join(m for m in BUDGET_METHODS if m != 'sparse')}).",
        )
        budget = c2.number_input(
            # Named for the methods that read it: with full chosen, an editable "Budget % 1" read as a cap (the UX
            # review); the form sends nothing before Launch, so the box cannot grey out as the method changes.
            "Budget % (row methods and layers)", BUDGET_STEPS[0] * 100, 100.0, state.budget() * 100, format="%.4g",
            key=f"{key}_budget",
            help=f"The share of the model's parameters trained, read by {', '.join(BUDGET_METHODS)}; the other "
            "methods (full, head, bitfit, lora, prefix) train what they train whatever it says.",
        )
        epochs = c3.number_input("Epochs", 1, 100, key=f"{key}_epochs")
        c1, c2, c3 = st.columns(3)  # one st.columns per row, so that Tab walks the boxes as they read
        lr = c1.number_input("Learning rate (0 = method default)", 0.0, 1.0, format="%.2g", key=f"{key}_lr",
                             help="0 takes the method's default: " + ", ".join(
                                 f"{method} {rate:g}" for method, rate in DEFAULT_LR.items()) + ".")
        # The CLI's range (any run's seed set again), less the seeds one launch adds after it.
        seed = c2.number_input("Seed", 0, MAX_SEED - MAX_SEEDS + 1, key=f"{key}_seed")
        seeds = c3.number_input(
            "Runs (seeds)",
            1,
            MAX_SEEDS,
            key=f"{key}_seeds",
            help="Runs to launch, one per seed from the Seed box on: compare their spread, and set them against "
            "another method's, on the Runs page (Compare groups of runs).",
        )
        name = st.text_input("Run name (optional)", key=f"{key}_name")
        # The rest folded: fifteen boxes at once buried the four a first run needs (each keeps its value folded).
        more = st.expander("More training options: schedule, averaging, cache, head, weight decay, epochs kept, "
                           "length read")
        c1, c2, c3 = more.columns(3)
        schedule = c1.selectbox(
            "Rate schedule",
            SCHEDULES,
            key=f"{key}_schedule",
            help="After a short linear warm-up: linear or cosine decay to 0, or a constant rate.",
        )
        average = c2.number_input(
            "Average the last share of steps",
            0.0,
            1.0,
            step=0.1,
            format="%.2f",
            key=f"{key}_average",
            help="Evaluate and save the trained weights averaged over this last share of the steps (0 = off). "
            "With a constant rate and 0.5 (SWA's recipe), sparse with the cache reached full finetuning's "
            "accuracy in 0.42 of its time on banking77; after a linear decay it changes little (BENCHMARKS.md).",
        )
        cache = c3.checkbox(
            "Cache the frozen lower layers",
            key=f"{key}_cache",
            help="Row methods: the layers below the lowest selected row run once per row, not every step. "
            "Epochs get faster (0.5-0.8 of an uncached epoch on banking77), but those layers lose their dropout, "
            "which cost about 0.35 point of accuracy there (BENCHMARKS.md).",
        )
        c1, c2, c3 = more.columns(3)
        cold = c1.checkbox(
            "Train from a cold head",
            key=f"{key}_cold",
            help="Start training from the classifier head as loaded (random) instead of the warmed-up one; the "
            "row methods still warm a head for their scores. In 10-shot it helped sparse on trec6 and snips "
            "(+0.4 to +2.6 points) and cost it on hint3 (-0.6 to -1.8; BENCHMARKS.md): try both on your "
            "validation rows.",
        )
        decay = c2.number_input(
            "Weight decay",
            0.0,
            100.0,
            step=0.1,
            format="%.2g",
            key=f"{key}_decay",
            help="AdamW's weight decay. The row methods decay only their trained rows' changes, pulling them back "
            "towards the checkpoint's; the others decay their weights towards 0. On banking77 10-shot 1.0 lifted "
            "sparse by 0.7 point, on snips 10-shot it changed nothing (BENCHMARKS.md): a per-data-set choice.",
        )
        max_length = c3.number_input(
            "Sub-tokens read per text",
            8,
            MAX_LENGTH,
            step=8,
            key=f"{key}_max_length",
            help="Each text is cut to this many sub-tokens (word pieces, the model's markers included) in training, "
            "predictions and attributions; the Data page says how many texts are longer. Longer reads cost time and "
            "memory: the default model at batch 32, sparse, one thread took about 11 s an epoch of 240 rows and "
            "1.3 GB at 64, 58 s and 3.6 GB at 256, 7.8 GB at 512 (the process's peak).",
        )
        c1, c2, c3 = more.columns(3)
        keep = c3.radio(
            LONG_TEXTS_KEEP,
            list(KEEP_SIDES),
            horizontal=True,
            key=f"{key}_keep",
            help="What a text longer than the sub-tokens read keeps, in training, predictions and attributions: its "
            "start (the usual choice) or its end, where texts greet or quote first and ask last (support tickets, "
            "e-mails). The run's tokenizer keeps the choice, so a plain transformers pipeline reads texts alike.",
        )
        best = c1.checkbox(
            "Keep the best epoch",
            key=f"{key}_best",
            help="Save (and score on test) the weights of the epoch with the best validation accuracy, not the last "
            "epoch's. Not with averaging (the average is what is saved).",
        )
        patience = c2.number_input(
            "Stop after N epochs without gain",
            0,
            100,
            key=f"{key}_patience",
            help="End training once this many epochs in a row have not bettered the validation accuracy (0 = run "
            "every epoch). The rate schedule stays the whole run's.",
        )
        if few_validation := few_validation_note():
            more.caption(escape_markdown(few_validation))
        quantile = defaults.out_of_scope_quantile
        if out_of_scope_labels:
            quantile = st.columns(3)[0].number_input(
                "Out-of-scope quantile",
                0.01,
                0.99,
                format="%.2f",
                key=f"{key}_oos",
                help=f"Test has {len(out_of_scope_labels)} label(s) train never had, e.g. "
                f"{escape_markdown(out_of_scope_labels[0])}: those rows are scored as out-of-scope queries. A "
                "prediction abstains below this quantile of the validation rows' confidences"
                + (f" ({plural(rows, 'in-scope row')} here: below {FEW_VALIDATION_ROWS} the quantile is rough, and seeds move the share "
                   "turned away a lot)." if 0 < (rows := validation_rows(in_scope=True)) < FEW_VALIDATION_ROWS else "."),
            )
        state.keep(*(f"{key}_{option}" for option in kept_defaults))
        data = state.data_choice()  # beside Launch: the data set trained on is never a guess
        st.caption(f"Data: {escape_markdown(data.shown) if data else 'none'} · runs on: {default_device()} · row "
                   f"choice (Budget page): {row_choice_label(state.mask_cfg())}")
        if not st.form_submit_button("Launch", type="primary"):
            return None
    # The budget launched becomes the shared one: the box (seeded from it) and the Budget and Sensitivity pages then
    # show what the last run used, and the next Launch does not fall back silently to the Budget page's figure.
    state.set_budget(float(budget) / 100)
    mask = state.mask_cfg()  # the Budget page's row choice, at that budget
    cfg = dataclasses.replace(
        defaults,
        method=method,
        epochs=int(epochs),
        lr=float(lr),
        schedule=schedule,
        average_last=float(average),
        cache_frozen_layers=bool(cache),
        head_warmup=not cold,
        weight_decay=float(decay),
        keep_best=bool(best),
        early_stop=int(patience),
        max_length=int(max_length),
        truncation_side=KEEP_SIDES[keep],
        out_of_scope_quantile=float(quantile),
        seed=int(seed),
        mask=mask,
        mining=state.mining_cfg(),
        sensitivity=state.sens_cfg(),
        device=recorded_device(),
    )
    return (name or default_run_name(method, mask.budget)), cfg, int(seeds)


MAX_SEEDS = 10
"""Seeds one press of Launch may run (the session's cap on waiting and running jobs still applies)."""
MAX_LENGTH = LENGTH_COUNTED
"""The most sub-tokens the Finetune form lets a run read per text (BERT-sized models' position limit)."""


def launch_options(key: str = "ft") -> dict[str, Any]:
    """The epochs, seed, seeds, sub-tokens per text and end kept of the Finetune form (``key``), as last submitted
    there, for launches from other pages (the Budget page's): FinetuneConfig's defaults (one seed) until the form has
    been used."""
    defaults = FinetuneConfig()
    keep = state.kept(f"{key}_keep", KEEP_START)
    return {"epochs": int(state.kept(f"{key}_epochs", default_epochs())),
            "seed": int(state.kept(f"{key}_seed", defaults.seed)), "seeds": int(state.kept(f"{key}_seeds", 1)),
            "max_length": int(state.kept(f"{key}_max_length", defaults.max_length)),
            "truncation_side": KEEP_SIDES.get(keep, defaults.truncation_side)}


def _session_data() -> AnnotatedData | None:
    """The session's data set as read, or None where there is none or it cannot be read (the pages say why)."""
    choice = state.data_choice()
    try:
        return cache.data(choice) if choice is not None else None
    except DataError:
        return None


def read_length(key: str = "ft") -> int:
    """The sub-tokens per text the Finetune form's runs read (``key``'s), within what the session's model reads: the
    pages that score or audit read as runs do (the long-text review: they read 64 where runs read 512), and a form
    left at 256 crashed them on a model of 128 positions (the diff review)."""
    length = launch_options(key)["max_length"]
    limit = cache.model_positions(state.model_source())
    return min(length, limit) if limit else length


def read_side(key: str = "ft") -> str:
    """The end of a long text the Finetune form's runs cut (``FinetuneConfig.truncation_side``): the pages that score
    or audit cut texts as runs do."""
    return launch_options(key)["truncation_side"]


def scoring_cfg() -> SensitivityConfig:
    """The Sensitivity page's options at the length runs read (``read_length``), cutting texts where they do: the page
    scored 64 where runs read 512, so its heatmaps were not the rows a sparse run trains, and a run takes the page's
    scores only where they read its length and end (``training.scores_alike``)."""
    return dataclasses.replace(state.sens_cfg(), max_length=read_length(), truncation_side=read_side())


def validation_rows(in_scope: bool = False) -> int:
    """Rows of the session's validation split (0 where unread); ``in_scope``: those of train's labels alone, which
    the abstention threshold is a quantile of."""
    data = _session_data()
    if data is None:
        return 0
    return int((data.label_ids("validation") >= 0).sum()) if in_scope else len(data.validation)


def data_steps_note(epochs: int) -> str | None:
    """``config.few_steps_note`` for the session's data at ``epochs`` (None where it is not few-shot or unread)."""
    data = _session_data()
    if data is None:
        return None
    return few_steps_note(len(data.train), data.train["label"].nunique(), epochs, FinetuneConfig().batch_size)


def few_validation_note() -> str:
    """What choosing on the session's validation rows is worth where they are few (FEW_VALIDATION_ROWS), else ''."""
    rows = validation_rows()
    if not 0 < rows < FEW_VALIDATION_ROWS:
        return ""
    return (f"Validation holds {plural(rows, 'row')}: one row is {row_points(rows)} points of its accuracy, so epochs often tie "
            "and the best epoch, or a stop, chosen on it is largely chance (few-shot: 30 epochs stopped after 5 scored "
            "0.79 on test, 0.91 without the stop).")


def default_epochs() -> int:
    """The Epochs box's first value: FinetuneConfig's, or FEW_SHOT_EPOCHS where the session's training split is
    few-shot (the few-shot review: at the default 3 epochs, 6 steps, an annotator's 10 rows per label scored 13
    points below what 30 epochs gave, and nothing said so)."""
    epochs = FinetuneConfig().epochs
    return FEW_SHOT_EPOCHS if data_steps_note(epochs) else epochs


def form_used(key: str = "ft") -> bool:
    """Whether the Finetune form (``key``) has been shown in this session (its values are then the user's)."""
    return state.kept(f"{key}_epochs") is not None


def default_run_name(method: str, budget: float) -> str:
    """``sparse-1pct``; methods the budget does not size get none in their name (``lora``)."""
    return f"{method}-{budget * 100:.3g}pct" if method in BUDGET_METHODS else method


DATA_SOURCES = {"sample": "Bundled sample", "shared": "Server data set", "upload": "Upload a file"}


def data_picker(current: state.DataChoice | None, key: str = "data") -> state.DataChoice | None:
    """Sample, a server-side set (../shared/data/*) or an upload saved under this session's folder."""
    kinds = list(DATA_SOURCES)
    # The index only seeds a new radio: once its key holds a value (set by ``switch_to_upload`` too), it is that one.
    seeded = {} if f"{key}_kind" in st.session_state else {"index": kinds.index(current.kind) if current else 0}
    kind = st.radio("Source", kinds, format_func=DATA_SOURCES.get, horizontal=True, key=f"{key}_kind", **seeded)
    choice = current if current and current.kind == kind else None
    if kind == "sample":
        choice = state.sample_choice()
        if choice is None:
            st.info("The bundled sample (clm_explore/sample_data/banking77_20) is not present in this installation.")
    elif kind == "shared":
        sets = {c.name: c for c in state.shared_choices()}
        if not sets:
            st.info("No server-side data sets on this server: its administrator offers them by setting "
                    "CLM_EXPLORE_SHARED_DATA to a folder of data sets (a folder of split files each).")
            return None
        names = list(sets)
        name = st.selectbox(  # none picked until one is chosen: the first set took over from an upload at once, and
            "Data set",  # started its scoring on the next page (the UX review)
            names,
            key=f"{key}_shared",
            index=names.index(current.name) if current and current.kind == "shared" and current.name in sets else None,
            placeholder="Choose a data set",
        )
        if name is None:
            return None
        choice = choice if choice and choice.name == name else sets[name]
    else:
        cap = DataConfig().max_file_mb
        upload = st.file_uploader(
            "Data file",
            type=["csv", "tsv", "jsonl", "ndjson", "json", "parquet"],
            key=f"{key}_upload{state.get(f'{key}_upload_box', 0) or ''}",  # 0: the first box, named data_upload
        )
        st.caption(f"CSV, TSV, JSONL, JSON or Parquet, up to {cap:.0f} MB: a text column and a label column. One "
                   "file is split into train, validation and test (stratified by label), unless a column named split "
                   "says each row's (train, validation or dev, test).")
        st.caption("Who sees it: the file stays this session's, but this page's address opens a copy of the session, "
                   "upload included, for whoever has it; and runs are every user's, so a run trained on it shows its "
                   "test rows (texts and labels) and its mined words to anyone on this server.")
        if upload is not None:
            raw = upload.getvalue()
            if len(raw) > cap * 2**20:
                st.error(f"{escape_markdown(upload.name)} is {len(raw) / 2**20:.0f} MB; the limit is {cap:.0f} MB.")
                return None
            choice = state.upload_choice(raw, upload.name, choice)
        elif choice is not None:  # the box is empty after a page change or another source: the file is not lost
            st.caption(f"Working on {escape_markdown(choice.name)}, uploaded earlier in this session; a file dropped "
                       "above replaces it.")
        kept_uploads(choice, key)
    return choice


def kept_uploads(current: state.DataChoice | None, key: str) -> None:
    """The session's other kept uploads, to work on again (``_pick_kept_upload``): after another source was picked
    the file box was empty, and the file could only be uploaded again (the UX review)."""
    others = {c.path: c for c in state.session_uploads() if current is None or c.path != current.path}
    if others:
        st.selectbox("Or work on a file uploaded earlier in this session", list(others), index=None,
                     format_func=lambda path: others[path].name, placeholder="Choose a file", key=f"{key}_kept",
                     on_change=_pick_kept_upload, args=(others, key))


def _pick_kept_upload(others: dict[str, state.DataChoice], key: str) -> None:
    """The kept upload chosen becomes the session's data, and the box empties again: left holding it, the box would
    name a file of a list that no longer holds it (the one picked is the one worked on). A fresh file box too, as
    ``switch_to_upload`` makes: one still holding a file would select that again on the next run."""
    path = st.session_state.get(f"{key}_kept")
    if path in others:
        state.set_data_choice(others[path])
        state.put(f"{key}_upload_box", int(state.get(f"{key}_upload_box", 0)) + 1)
    st.session_state[f"{key}_kept"] = None


def leave_out_incomplete_rows(choice: state.DataChoice, key: str = "data") -> None:
    """Under an upload refused for rows without a text or a label: a button that works on a copy without them, as
    an upload of this session (the file as uploaded is not changed), so that an annotator need not fix the file elsewhere first
    (the UX review). Nothing is dropped unless pressed, and the button says how many rows go."""
    from clm_explore.data import DataError, without_incomplete_rows

    cfg = DataConfig(text_col=choice.text_col, label_col=choice.label_col)
    try:
        written, kept, dropped = without_incomplete_rows(Path(choice.path).read_bytes(), choice.name, cfg)
    except (OSError, DataError):  # the file gone, or its columns not found: the error above says what to do
        return
    stem = Path(choice.name).stem
    st.button(f"Work on the file without these {dropped} row(s)", key=f"{key}_complete", on_click=switch_to_upload,
              args=(lambda: written, f"{stem}-complete.csv", kept, key),
              help=f"Selects a copy of {choice.name} without the {dropped} row(s) that lack a text or a label "
              f"({kept:,} rows), as an upload of this session; the file as uploaded is not changed.")
    if message := state.get(f"{key}_switch_error"):
        state.put(f"{key}_switch_error", None)
        st.error(escape_markdown(message))


def switch_to_upload(write: Callable[[], bytes], filename: str, rows: int, key: str = "data") -> None:
    """A button's callback: make the file ``write()`` returns (``rows`` rows; one the app writes, such as the data with
    accepted labels; written only when pressed) this session's upload and select it, as if it had been uploaded. In
    a callback, before the page reruns: the Source radio may only be set before it is drawn. The file the session
    works on now, if an upload, is kept (it is what the new one is compared with); a refusal is put in
    ``{key}_switch_error`` for the page to show."""
    from clm_explore.data import DataError

    current = state.data_choice()
    limits = DataConfig()
    try:
        raw = write()
        if len(raw) > limits.max_file_mb * 2**20 or rows > limits.max_rows:
            raise DataError(f"The data would be {len(raw) / 2**20:.0f} MB in {rows:,} rows, above an upload's limits "
                            f"({limits.max_file_mb:.0f} MB, {limits.max_rows:,} rows): download the zip instead and "
                            "train on it from the command line (clm-explore finetune --data FOLDER).")
        protect = (Path(current.path),) if current is not None and current.kind == "upload" else ()
        choice = state.upload_choice(raw, filename, None, protect=protect)
    except DataError as exc:  # e.g. the server's room for uploads is full
        state.put(f"{key}_switch_error", str(exc))
        return
    state.set_data_choice(choice)
    st.session_state[f"{key}_kind"] = "upload"
    # A fresh file box: the one still holding an uploaded original would select that again on the next run.
    state.put(f"{key}_upload_box", int(state.get(f"{key}_upload_box", 0)) + 1)


MAX_DRAW = 2**31 - 1
"""The Draw box's largest number."""
MAX_SHARE_PERCENT = 49.0
"""The carve boxes' largest share, in percent (DataConfig takes shares below 0.5)."""
MIN_TEST_PERCENT = 0.1
"""The Test box's smallest share, in percent (DataConfig takes any share above 0)."""


def row_draw(choice: state.DataChoice, current: state.DataChoice | None, key: str = "data") -> state.DataChoice:
    """The few-shot draw (``DataConfig.shots``): how far a few labelled rows per label go, the setting where the
    method's stability matters, which the command line's ``--shots`` offered and the app did not. The boxes start
    at the session's draw (``current``: a page change or a reopened session keeps it)."""
    # value=, not a value put in the session first: a box left out of a run (the Source radio between a sample and an
    # upload stops the page) came back showing its minimum, 0, while the session held the value, and the next click
    # sent the 0 (Streamlit draws a returning box from its default)
    limits = DataConfig()
    shots, seed = (current.shots, current.shots_seed) if current else (0, 0)
    # within the boxes' ranges: a saved session or a Python-made choice beyond them raised on every Data page run
    shots, seed = min(max(int(shots), 0), limits.max_rows), min(max(int(seed), 0), MAX_DRAW)
    with st.expander("Few-shot: train on a few rows of each label", expanded=bool(shots)):
        c1, c2 = st.columns(2)
        shots = c1.number_input("Training rows of each label", min_value=0, max_value=limits.max_rows,
                                value=shots, step=1, key=f"{key}_shots",
                                help="0: every row. A label with fewer rows keeps all its own.")
        seed = c2.number_input("Draw", min_value=0, max_value=MAX_DRAW, value=seed, step=1, key=f"{key}_shots_seed",
                               disabled=not shots, help="Another number draws other rows: runs on several draws "
                               "show how much the choice of rows moves the scores.")
        st.caption("Every page, and every run launched, then works on that many training rows of each label, and as "
                   "many validation rows, drawn at random; the test split stays whole, so runs on a draw are scored on "
                   "the same rows as runs on every row. The command line draws the same rows with --shots K "
                   "--data-seed S (finetune, mine, sensitivity, and bench's grids).")
    return dataclasses.replace(choice, shots=int(shots), shots_seed=int(seed) if shots else 0)


def carve_shares(choice: state.DataChoice, current: state.DataChoice | None, carved: tuple[str, ...],
                 key: str = "data") -> state.DataChoice:
    """The shares of train carved as validation and test, for data that gives neither split of its own
    (``AnnotatedData.carved``): the few-shot review's 70-row upload lost a tenth of its rows to a validation split
    of one row per label, which the command line's --validation-fraction 0 keeps and the app could not. The boxes
    start at the session's shares (``current``; value=, as in ``row_draw``)."""
    at = current or state.DataChoice("", "", "")
    percent = {name: min(max(round(share * 100, 4), low), MAX_SHARE_PERCENT) for name, share, low in
               (("validation", at.validation_fraction, 0.0), ("test", at.test_fraction, MIN_TEST_PERCENT))}
    shares = {}
    with st.expander("Splits carved from train", expanded=(at.validation_fraction, at.test_fraction)
                     != (DataConfig.validation_fraction, DataConfig.test_fraction)):
        c1, c2 = st.columns(2)
        if "validation" in carved:
            shares["validation_fraction"] = c1.number_input(
                "Validation % of train", min_value=0.0, max_value=MAX_SHARE_PERCENT, value=percent["validation"],
                step=5.0, format="%.4g", key=f"{key}_validation_fraction", help="0: no validation split, every row "
                "left trains; then no per-epoch curve, kept best epoch or early stop.")
        if "test" in carved:
            shares["test_fraction"] = c2.number_input(
                "Test % of train", min_value=MIN_TEST_PERCENT, max_value=MAX_SHARE_PERCENT, value=percent["test"],
                step=5.0, format="%.4g", key=f"{key}_test_fraction",
                help="Held out before the validation split is carved; every copy of a text goes to the same side.")
        st.caption("The data gives no " + " or ".join(f"{split} split" for split in carved) + " of its own, so it is "
                   "carved out of train at random (seeded), label by label. The command line carves the same rows "
                   "with --validation-fraction and --test-fraction (shares, not percents).")
    return dataclasses.replace(choice, **{name: round(value / 100, 6) for name, value in shares.items()})


def column_mapping(choice: state.DataChoice, columns: list[str], key: str = "data") -> state.DataChoice:
    """Text and label column pickers ('(detect)' lets the loader find them)."""
    cols = ["(detect)", *columns]
    c1, c2 = st.columns(2)
    text_col = c1.selectbox(
        "Text column",
        cols,
        key=f"{key}_text_col",
        index=cols.index(choice.text_col) if choice.text_col in cols else 0,
    )
    label_col = c2.selectbox(
        "Label column",
        cols,
        key=f"{key}_label_col",
        index=cols.index(choice.label_col) if choice.label_col in cols else 0,
    )
    return dataclasses.replace(
        choice,
        text_col=None if text_col == "(detect)" else text_col,
        label_col=None if label_col == "(detect)" else label_col,
    )
