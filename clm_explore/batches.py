"""Token ids, length-bucketed batches and batched prediction, shared by training, evaluation and benches."""

from __future__ import annotations

import contextlib
import numbers
import os
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from clm_explore.modeling import LoadedModel, autocast_dtype


def text_list(texts: str | Iterable[str]) -> list[str]:
    """``texts`` as a list of strings: one string is one text (not its characters).

    Raises:
        TypeError: an item that is not a string (a NaN cell, a number), with its position.
    """
    if not isinstance(texts, str | Iterable):  # a number: "'int' object is not iterable"
        raise TypeError(f"texts is one string or a list of strings; got {type(texts).__name__} {texts!r}.")
    if isinstance(texts, pd.DataFrame | dict):  # iterating one yields its column names or keys, not texts
        raise TypeError(f"texts is one string or a list of strings; got a {type(texts).__name__}: pass its text "
                        "column (frame['text']).")
    listed = [texts] if isinstance(texts, str) else list(texts)
    for i, text in enumerate(listed):
        if not isinstance(text, str):
            raise TypeError(f"texts[{i}] is {type(text).__name__} {text!r}; every text must be a string.")
    return listed


CHARS_PER_TOKEN_BOUND = 32
"""Characters kept per sub-token a call reads: a fast tokenizer encodes a whole text before it truncates, about
170 bytes a character for a text of punctuation, so a 9 MB cell took 5.5 GB. The first ``max_length`` sub-tokens
of a text average under 32 characters each unless it runs several 100-character words together."""
TOKENIZE_CHUNK = 256
"""Texts per tokenizer call: the encodings of a whole upload at once held gigabytes, however short the ids kept."""


def bounded_texts(texts: Sequence[str], max_tokens: int, side: str = "right") -> list[str]:
    """Each text cut to ``max_tokens * CHARS_PER_TOKEN_BOUND`` characters past its leading whitespace (which reads
    as no token), a prefix long enough for its first ``max_tokens`` sub-tokens (the offsets of a tokenizer's
    encoding still index the text itself); with ``side`` 'left' (a tokenizer that keeps a text's end) the suffix as
    long past its trailing whitespace, for its last ones."""
    cap = max_tokens * CHARS_PER_TOKEN_BOUND
    if side == "left":
        # past trailing whitespace: a short question followed by 600 spaces kept the spaces alone (the diff review)
        return [text if len(text) <= cap else text[max(0, len(text.rstrip()) - cap) :] for text in texts]
    return [text if len(text) <= cap else text[: cap + len(text) - len(text.lstrip())] for text in texts]


def cut_side(tokenizer: Any) -> str:
    """Which end of a long text ``tokenizer`` cuts: 'right' (its start is read) or 'left' (its end)."""
    return "left" if getattr(tokenizer, "truncation_side", "right") == "left" else "right"


@contextlib.contextmanager
def cutting(tokenizer: Any, side: str) -> Iterator[Any]:
    """``tokenizer`` cutting long texts at ``side`` for the block, then as before: a scoring or an audit reads
    texts as the run it serves will, on a model its caller may use again."""
    if not hasattr(tokenizer, "truncation_side"):  # not a transformers tokenizer: it has no side to set
        yield tokenizer
        return
    before = tokenizer.truncation_side
    tokenizer.truncation_side = side
    try:
        yield tokenizer
    finally:
        tokenizer.truncation_side = before


def tokenized(tokenizer: Any, texts: Sequence[str], max_tokens: int, **kwargs: Any) -> Iterator[Any]:
    """``tokenizer(texts, **kwargs)`` in chunks of ``TOKENIZE_CHUNK`` texts, each text cut by ``bounded_texts`` at
    the end the tokenizer cuts: what a call keeps is the caller's (ids, encodings), the memory of a chunk's
    encoding is bounded."""
    texts, side = list(texts), cut_side(tokenizer)
    for start in range(0, len(texts), TOKENIZE_CHUNK):
        yield tokenizer(bounded_texts(texts[start : start + TOKENIZE_CHUNK], max_tokens, side), **kwargs)


def sub_token_lengths(tokenizer: Any, texts: Sequence[str], up_to: int) -> list[int]:
    """Sub-tokens of each text (the model's markers included), counted up to ``up_to + 1``: a longer text counts
    one more than ``up_to``, which says a run reading ``up_to`` cuts it (its whole length is not needed)."""
    counted = up_to + 1
    chunks = tokenized(tokenizer, texts, counted, truncation=True, max_length=counted)
    return [len(row) for chunk in chunks for row in chunk["input_ids"]]


def cut_texts(tokenizer: Any, texts: Sequence[str], max_length: int) -> int:
    """How many of ``texts`` are longer than ``max_length`` sub-tokens (the model's markers included): those whose
    end a run reading that many never sees."""
    return sum(n > max_length for n in sub_token_lengths(tokenizer, texts, max_length))


def cut_texts_note(tokenizer: Any, texts: Sequence[str], max_length: int, reader: str, longer: str,
                   what: str = "texts") -> str:
    """'' when every text fits in ``max_length`` sub-tokens, else how many do not (``what`` names them), that
    ``reader`` reads their start alone (their end, where the tokenizer keeps it), and ``longer`` (how to read more).
    Where most are cut, their figures may come from the cut (the long-text review: 298 of 360 correct rows flagged by
    an audit, a run at chance blamed on its learning rate, where the texts' questions sat past the 64 sub-tokens
    read)."""
    cut = cut_texts(tokenizer, texts, max_length)
    if not cut:
        return ""
    share = cut / len(texts)
    shown = f"{share:.0%}" if share >= 0.01 else f"{share:.1%}"  # one in 300 read "(0%)" (the diff review)
    kept, lost = ("end", "starts") if cut_side(tokenizer) == "left" else ("start", "ends")
    said = (f"{cut:,} of {len(texts):,} {what} ({shown}) are longer than the {max_length} sub-tokens "
            f"{reader} reads: their {kept} alone is read")
    if cut > len(texts) / 2:
        said += f", so what their {lost} say is never seen and the figures may come from the cut"
    return f"{said}; {longer}"


def longer_read_advice(max_length: int, limit: int | None, how: str, side: str = "right", switch: str = "") -> str:
    """How to read more of cut texts: ``how`` (a flag, a box) up to what the model reads (its positions, at most
    512), or, where ``max_length`` is that already, to shorten them (the diff review: "--max-length (up to 512)
    reads more" said to a model of 128 positions, and at 512). ``switch`` (a flag, a box) names the other end to keep,
    where ``side`` keeps a text's start: tickets that greet first ask last."""
    most = min(limit or 512, 512)
    other = f"; {switch} keeps their ends instead" if switch and side == "right" else ""
    if max_length >= most:
        where = "last" if side == "left" else "first"
        return f"this model reads at most {most}: shorten the texts, or put what decides the label {where}{other}"
    return f"{how} (up to {most}) reads more, at a cost in time{other}"


def encode(loaded: LoadedModel, texts: list[str], max_length: int) -> list[list[int]]:
    """Token ids of a list of texts (the API's entry points check them with ``text_list``). A text whose cut prefix
    (``bounded_texts``) gave fewer than ``max_length`` sub-tokens, as very long words do (each one [UNK]), is encoded
    again from a longer prefix, up to ``MAX_CUT_GROWTH`` times as long: the interop review saw "x" * 1100 + " how do
    I unblock my pin" read as the x's alone, where a plain pipeline read the words after them."""
    found = [ids for chunk in tokenized(loaded.tokenizer, texts, max_length, truncation=True, max_length=max_length)
             for ids in chunk["input_ids"]]
    for i, text in enumerate(texts):
        growth = 1
        while len(found[i]) < max_length and growth < MAX_CUT_GROWTH and len(text) > max_length * growth * (
                CHARS_PER_TOKEN_BOUND):
            growth *= 4
            [found[i]] = next(tokenized(loaded.tokenizer, [text], max_length * growth, truncation=True,
                                        max_length=max_length))["input_ids"]
    return found


MAX_CUT_GROWTH = 64
"""How much longer than ``bounded_texts``' cut ``encode`` reads a text of long words at most (2,048 characters a
sub-token)."""


def batch_order(lengths: list[int], batch_size: int, generator: torch.Generator) -> list[np.ndarray]:
    """Shuffled batches of similar length: shuffle, sort within windows of 50 batches, shuffle batches."""
    perm = torch.randperm(len(lengths), generator=generator).numpy()
    window = batch_size * 50
    batches = []
    for start in range(0, len(perm), window):
        chunk = perm[start : start + window]
        chunk = chunk[np.argsort([lengths[i] for i in chunk], kind="stable")]
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    order = torch.randperm(len(batches), generator=generator).numpy()
    return [batches[i] for i in order]


def collate(ids: list[list[int]], idx: np.ndarray, pad_id: int | None, multiple: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """(batch, width) input ids and attention mask, right-padded to the longest row, rounded up to a
    multiple of ``multiple`` tokens (a compiled model then sees few shapes). ``pad_id`` None (a tokenizer without a
    pad token, in a ``LoadedModel`` built by hand): 0, which the mask hides as it hides any pad."""
    width = -(-max(len(ids[i]) for i in idx) // multiple) * multiple
    input_ids = torch.full((len(idx), width), 0 if pad_id is None else pad_id, dtype=torch.long)
    mask = torch.zeros((len(idx), width), dtype=torch.long)
    for r, i in enumerate(idx):
        input_ids[r, : len(ids[i])] = torch.tensor(ids[i])
        mask[r, : len(ids[i])] = 1
    return input_ids, mask


@torch.no_grad()
def predict_proba(model: nn.Module, loaded: LoadedModel, texts: list[str], max_length: int = 64,
                  batch_size: int = 64, device: torch.device | None = None,
                  on_batch: Callable[[int, int], None] | None = None) -> np.ndarray:
    """(rows, labels) class probabilities, batched by length; ``on_batch(done, total)`` hears each batch's end (texts
    done of all)."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    texts = text_list(texts)
    ids = encode(loaded, texts, max_length)
    order = np.argsort([len(x) for x in ids], kind="stable")
    probs = np.zeros((len(texts), model.config.num_labels), dtype=np.float32)
    dtype = autocast_dtype(device)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        input_ids, mask = collate(ids, idx, loaded.tokenizer.pad_token_id)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            logits = model(input_ids=input_ids.to(device), attention_mask=mask.to(device)).logits
        probs[idx] = torch.softmax(logits.float(), -1).cpu().numpy()
        if on_batch is not None:
            on_batch(min(start + batch_size, len(order)), len(order))
    model.train(was_training)
    return probs


def predict(run: str | Path | Any, texts: str | Iterable[str], max_length: int | None = None,
            on_progress: Callable[[int, int], None] | None = None) -> pd.DataFrame:
    """Class probabilities of ``texts`` (one string or several) under a finished run (its folder or run id, the
    ``FinetuneResult`` that ``finetune`` returned, its registry record, or the run loaded: ``load_run``'s
    ``LoadedModel``): a row per text, a column per label (in the run's label order).
    Texts are read at the run's trained length unless ``max_length`` says otherwise, so the figures match its
    predictions.csv and ``clm-explore predict``. ``on_progress(done, total)`` hears each batch's end."""
    from clm_explore.config import ConfigError, FinetuneConfig
    from clm_explore.modeling import LoadedModel, check_trained, load_run, read_length_problem
    from clm_explore.runs import TRAINED_LENGTH_KEY, run_folder, trained_max_length

    texts = text_list(texts)
    if max_length is not None and (not isinstance(max_length, numbers.Integral) or max_length < 0):  # 0, None: own
        raise ValueError(f"max_length is the sub-tokens read per text, 8 to 512 (None or 0: the run's trained "
                         f"length); got {max_length}.")
    if isinstance(run, LoadedModel):  # a run loaded already (load_run), as explain takes it
        check_trained(run)
        loaded, length = run, max_length or getattr(run.model.config, TRAINED_LENGTH_KEY, None) or FinetuneConfig.max_length
    else:
        run_dir = run_folder(run)
        loaded = load_run(run_dir)
        length = max_length or trained_max_length(run_dir)
    if max_length and (problem := read_length_problem(max_length, loaded)):
        raise ConfigError(f"max_length {problem}.")
    probs = predict_proba(loaded.model, loaded, texts, max_length=length, on_batch=on_progress)
    labels = [str(loaded.model.config.id2label[i]) for i in range(probs.shape[1])]
    return pd.DataFrame(probs, columns=labels, index=pd.Index(texts, name="text"))


def chosen_threshold(run: str | Path | Any) -> float | None:
    """The probability below which a run abstains ("out of scope"), as it chose it on its validation rows (its
    metrics.json's ``out_of_scope.threshold``: only where its test split held labels unseen in training), or None."""
    from clm_explore.runs import read_json_object, run_folder

    scope = read_json_object(run_folder(run) / "metrics.json").get("out_of_scope")
    threshold = scope.get("threshold") if isinstance(scope, dict) else None
    return float(threshold) if isinstance(threshold, int | float) and 0 < threshold < 1 else None


def prediction_table(probs: pd.DataFrame, threshold: float | None = None) -> pd.DataFrame:
    """``predict``'s probabilities as a table to read or save: a row per text in its order, with ``row`` (counted
    from 1), ``text``, ``label`` (the most probable) and its ``probability``, the ``runner_up`` label and its
    probability (two close ones say the model hesitates), and ``out_of_scope`` where a ``threshold`` is given (the
    top probability below it)."""
    values = probs.to_numpy()
    labels = np.asarray(probs.columns, dtype=object)
    order = np.argsort(-values, axis=1, kind="stable")
    rows = np.arange(len(values))
    table = pd.DataFrame({"row": rows + 1, "text": list(probs.index), "label": labels[order[:, 0]],
                          "probability": values[rows, order[:, 0]]})
    if values.shape[1] > 1:
        table["runner_up"] = labels[order[:, 1]]
        table["runner_up_probability"] = values[rows, order[:, 1]]
    if threshold is not None:
        table["out_of_scope"] = table["probability"] < threshold
    return table


def label_file(run: str | Path | Any, path: str | Path, text_col: str | None = None, max_length: int | None = None,
               max_texts: int | None = None, notes: list[str] | None = None,
               on_progress: Callable[[int, int], None] | None = None) -> pd.DataFrame:
    """The texts of a file (any format ``load_data`` reads, or a .txt file of one text per line: ``data.read_texts``)
    labelled by a finished run: ``prediction_table``, with ``out_of_scope`` where the run chose a threshold
    (``chosen_threshold``). ``notes`` receives the reader's remarks; ``on_progress(done, total)`` each batch's end.

    Raises:
        DataError: the file cannot be read, has no text column, or holds more than ``max_texts`` texts.
    """
    from clm_explore.config import DataConfig
    from clm_explore.data import DataError, TooManyRowsError, read_texts

    try:  # the reader stops at the cap: a file of millions of lines is not read whole to be refused
        texts = read_texts(path, text_col, cfg=DataConfig(max_rows=max_texts or DataConfig.max_rows), notes=notes)
    except TooManyRowsError:
        if max_texts is None:
            raise
        raise DataError(f"{Path(path).name} holds more than {max_texts:,} texts, the most labelled here at once: "
                        "split the file, or label it with `clm-explore predict --run RUN --file FILE`.") from None
    if on_progress is not None:
        on_progress(0, len(texts))
    probs = predict(run, texts, max_length, on_progress=on_progress)
    return prediction_table(probs, None if isinstance(run, LoadedModel) else chosen_threshold(run))  # no folder: none


@dataclass
class Evaluation:
    """A finished run scored on labelled rows (``evaluate``): its metrics, as a run's metrics.json holds them for
    its own test split, and a row per text."""

    run: str
    """The run's folder (or the loaded model's source)."""
    metrics: dict[str, Any]
    """accuracy, macro_f1, per_label_f1, confusion (rows gold, columns predicted; the run's label order), labels,
    test_rows, and where rows hold labels the run was not trained on (counted wrong): confusion_unseen and
    out_of_scope (``metrics.out_of_scope_metrics``: AUROC, in-scope accuracy, and the scores of abstaining below a
    threshold, where there is one)."""
    predictions: pd.DataFrame
    """A row per text: row, text, label (gold), pred, prob (of pred), out_of_scope (where a threshold applies: the
    prediction abstains, ``prob`` below it, as predictions.csv says), correct (``pred`` is ``label``, abstention
    aside)."""
    unseen_labels: list[str] = field(default_factory=list)
    """Gold labels the run has no output for: their rows are counted wrong."""
    notes: list[str] = field(default_factory=list)
    """The reader's remarks on the data (an encoding guessed, labels' spelling, the run's own data file: its test
    split alone scored), also given to ``evaluate``'s ``notes`` list where one was passed."""

    @property
    def accuracy(self) -> float:
        return float(self.metrics["accuracy"])

    @property
    def macro_f1(self) -> float:
        return float(self.metrics["macro_f1"])

    def to_frame(self) -> pd.DataFrame:
        """A row per label that occurs (gold or predicted): its gold rows, the rows predicted as it, and its F1,
        lowest F1 first (where the run struggles); then the labels the run was not trained on, without an F1."""
        predictions = self.predictions
        labels = [*self.metrics["per_label_f1"], *self.unseen_labels]
        frame = pd.DataFrame({"label": labels,
                              "rows": [int((predictions["label"] == x).sum()) for x in labels],
                              "predicted": [int((predictions["pred"] == x).sum()) for x in labels],
                              "f1": [self.metrics["per_label_f1"].get(x, float("nan")) for x in labels]})
        return frame.sort_values("f1", na_position="last", kind="stable").reset_index(drop=True)

    def __repr__(self) -> str:
        unseen = (f"; {len(self.unseen_labels)} label(s) the run was not trained on, counted wrong"
                  if self.unseen_labels else "")
        noted = f", {len(self.notes)} in .notes" if self.notes else ""  # 240 of 1,200 rows scored, and no word why
        return (f"Evaluation({self.run}: {len(self.predictions):,} rows, accuracy {self.accuracy:.4f}, macro-F1 "
                f"{self.macro_f1:.4f}{unseen}; .to_frame() per label, .predictions per row{noted})")


def evaluate(run: str | Path | Any, data: Any, max_length: int | None = None, notes: list[str] | None = None,
             abstain_below: float | None = None, **options: Any) -> Evaluation:
    """Score a finished run on labelled rows it has not seen: a fresh batch of annotations, another data set.

    Args:
        run: what ``predict`` takes (a run folder or id, a ``FinetuneResult``, a registry record, ``load_run``'s
            ``LoadedModel``).
        data: a data file (any format ``load_data`` reads), a folder of splits (its test file), a DataFrame, or
            ``AnnotatedData`` (its test split); every row is scored, none carved off (a split column's test rows,
            where one names them: ``data.read_labelled``), but for the very data the run trained on (its
            clm_run.json's ``data_digest``): its test split alone, as the run carved it, with a note.
        max_length: sub-tokens read per text (None: the run's trained length, as ``predict``).
        notes: receives the reader's remarks on ``data`` (an encoding guessed, labels' spaces trimmed).
        abstain_below: where rows hold labels the run was not trained on (out-of-scope queries), predictions whose
            top probability is below this count as "out of scope" in ``metrics["out_of_scope"]`` (None: the
            threshold the run chose on its validation rows, when it chose one; else AUROC and in-scope accuracy
            alone, which need none).
        options: ``DataConfig`` fields for reading ``data`` (``text_col="utterance"``, ``label_col="intent"``).

    Raises:
        DataError: the data cannot be read, or none of its labels is one of the run's.
    """
    from clm_explore.data import DataError, read_labelled
    from clm_explore.metrics import classification_metrics, out_of_scope_metrics
    from clm_explore.runs import run_folder

    if abstain_below is not None and not 0 < abstain_below < 1:
        raise ValueError(f"abstain_below must be a probability in (0, 1); got {abstain_below!r}")
    if not isinstance(run, LoadedModel):
        run = run_folder(run)  # a run id or a FinetuneResult as its folder, which the evaluation names
    notes = [] if notes is None else notes
    rows = read_labelled(data, notes=notes, **options)
    if not isinstance(run, LoadedModel):
        rows = _own_test_rows(Path(run), data, rows, notes, options)
    if rows.empty:  # an AnnotatedData whose test split is empty
        raise DataError("The data holds no rows to evaluate on.")
    probs = predict(run, rows["text"].tolist(), max_length)
    labels = [str(label) for label in probs.columns]
    rows = _in_run_spelling(rows, labels, notes)
    index = {label: i for i, label in enumerate(labels)}
    gold = np.array([index.get(label, -1) for label in rows["label"]], dtype=np.int64)
    if (gold == -1).all():
        raise DataError(f"None of the data's labels ({_some(sorted(set(rows['label'])))}) is one of the run's "
                        f"({_some(labels)}): check the label column (label_col=...).")
    pred, top = probs.to_numpy().argmax(1), probs.to_numpy().max(1)
    predictions = pd.DataFrame({"row": range(len(rows)), "text": rows["text"].tolist(), "label": rows["label"].tolist(),
                                "pred": np.array(labels)[pred], "prob": top})
    unseen = sorted(set(rows["label"]) - set(labels))
    where = run.source if isinstance(run, LoadedModel) else str(run)
    metrics = classification_metrics(gold, pred, labels)
    chosen = {} if abstain_below is not None else _run_scope(where)
    quantile, threshold = (None, abstain_below) if abstain_below is not None else (chosen.get("quantile"),
                                                                                    chosen.get("threshold"))
    scope = out_of_scope_metrics(gold, pred, top, np.zeros(0), quantile, len(labels), threshold=threshold)
    if scope is not None:
        if chosen.get("validation_rows"):  # the rows the run's threshold came from, as its own figures say them
            scope["validation_rows"] = chosen["validation_rows"]
        metrics["out_of_scope"] = scope
        if scope.get("threshold") is not None:  # the rows the abstention figures count as answered "out of scope"
            predictions["out_of_scope"] = top < scope["threshold"]  # (the metrics review: they were not shown)
    predictions["correct"] = predictions["label"] == predictions["pred"]
    return Evaluation(where, metrics, predictions, unseen, list(notes))


def _in_run_spelling(rows: pd.DataFrame, labels: list[str], notes: list[str]) -> pd.DataFrame:
    """``rows`` with each label the run lacks but has as the same whole number written otherwise ("3" and "3.0")
    spelled as the run's: a run trained before files' whole-number labels were read as whole numbers ("3.0")
    otherwise scored 0 on the same file, which now reads "3" (the diff review)."""
    from clm_explore.data import WHOLE_NUMBER

    runs_by_number = {match.group(1): label for label in labels if (match := WHOLE_NUMBER.fullmatch(label))}
    runs_by_form = {unicodedata.normalize("NFC", label): label for label in labels}
    known = set(labels)
    spelled = {label: runs_by_number[match.group(1)] for label in set(rows["label"]) - known
               if (match := WHOLE_NUMBER.fullmatch(label)) and match.group(1) in runs_by_number}
    # A run trained before labels were read in one Unicode form ('Überweisung' decomposed, as macOS writes it)
    spelled |= {label: runs_by_form[label] for label in set(rows["label"]) - known - set(spelled)
                if label in runs_by_form}
    if not spelled:
        return rows
    notes.append(f"labels read as the run writes them (the same number, or the same accents encoded otherwise): "
                 f"{_some(sorted(f'{a!r} as {b!r}' for a, b in spelled.items()))}")
    return rows.assign(label=rows["label"].replace(spelled))


def _own_test_rows(run_dir: Path, data: Any, rows: pd.DataFrame, notes: list[str], options: dict[str, Any]
                   ) -> pd.DataFrame:
    """``rows``, or the test split alone where ``data`` is the data the run was trained on (the same rows in its
    splits as its clm_run.json's ``data_digest``; for a run older than that record, the same test rows as its
    predictions.csv) and ``rows`` hold more than its test split: a single file whose splits the run carved, read
    whole, scored its training rows too (the data review: 328 rows, 263 of them trained on, with no word; the upgrade
    review: an older run's 2,000 rows, 1,600 of them trained on). The run's own data file changed since is said."""
    from clm_explore.data import AnnotatedData, DataError, data_digest, load_data
    from clm_explore.runs import read_json_object, recorded_data_paths

    if isinstance(data, AnnotatedData):
        return rows
    record = read_json_object(run_dir / "clm_run.json")
    digest = record.get("data_digest")
    try:  # carved as the run carved it (its seed, fractions and split column: the metrics review saw another seed
        # score 144 of 200 rows that trained the run, and blame the file), with the options this call gives (the
        # CLI passes None for those not given: not an override)
        own = load_data(data, **{**_recorded_carve(record), **{k: v for k, v in options.items() if v is not None}})
    except (DataError, ValueError):  # data evaluate reads but training refuses (one label, say): not the run's
        return rows
    now = data_digest(own)
    at_path = isinstance(data, str | os.PathLike) and Path(data).expanduser().resolve() in [
        p.resolve() for p in recorded_data_paths(record)]
    if digest and now != digest and at_path:
        notes.append(f"{data} is the run's data file, but not the rows it was trained on any more (their digest "
                     f"{digest} then, {now} now): it changed since, so its rows are scored as they are now, rows "
                     "that trained the run perhaps among them.")
    same = now == digest if digest else _same_test_rows(run_dir, own.test)
    if not same or len(rows) <= len(own.test):
        return rows
    trained = ("which held its few-shot draw of training and validation rows" if own.config and own.config.shots
               else "which trained it or chose its epoch")
    notes.append(f"this is the data the run was trained on: its test split ({len(own.test):,} rows, as the run carved "
                 f"it) was scored, not the other {len(rows) - len(own.test):,} rows, {trained}; pass other labelled "
                 "rows to score it on more."
                 + ("" if digest else " (Known by its predictions.csv: the run is older than its record of its data.)"))
    return own.test[["text", "label"]].reset_index(drop=True)


def _recorded_carve(record: dict[str, Any]) -> dict[str, Any]:
    """The options the run carved and drew its data's splits with (seed, fractions, split column, shots), from its
    clm_run.json's ``data_config``; none for a run older than that record."""
    recorded = record.get("data_config")
    if not isinstance(recorded, dict):
        return {}
    return {key: recorded[key] for key in ("validation_fraction", "test_fraction", "seed", "split_col", "shots",
                                           "shots_seed")
            if recorded.get(key) is not None}


def _same_test_rows(run_dir: Path, test: pd.DataFrame) -> bool:
    """Whether ``test`` holds the rows the run predicted on its own test split (its predictions.csv), texts and
    labels alike, in any order: how the data of a run that recorded no digest is known."""
    try:
        predicted = pd.read_csv(run_dir / "predictions.csv", dtype=str, keep_default_na=False,
                                usecols=["text", "label"])
    except (OSError, ValueError):
        return False
    pairs = sorted(zip(predicted["text"], predicted["label"], strict=True))
    return len(pairs) == len(test) and pairs == sorted(zip(test["text"], test["label"], strict=True))


def _run_scope(run: str) -> dict[str, Any]:
    """The out-of-scope figures of a run that chose a threshold on its validation rows (its metrics.json's: quantile,
    threshold, validation_rows), {} where it chose none (its test split had no label unseen in train) or ``run`` is
    no run folder."""
    from clm_explore.runs import read_json_object

    scope = read_json_object(Path(run) / "metrics.json").get("out_of_scope")
    if not isinstance(scope, dict) or not isinstance(scope.get("threshold"), int | float):
        return {}
    return {**scope, "threshold": float(scope["threshold"])}


def _some(names: list[str], shown: int = 5) -> str:
    """The first ``shown`` names, and '...' when there are more."""
    return ", ".join(names[:shown]) + (", ..." if len(names) > shown else "")
