"""Train a run again from its own record (clm_run.json): the same method and settings, the same model, the same rows
read with the same options, the same given scores; ``clm-explore rerun`` and ``clm_explore.rerun``.

Why: a run folder recorded its config, yet to train it again a user had to rebuild the config, the data's options
(a ``--label-col`` left out trained another task without a word) and the scores it was given by hand (the
reproducibility review). Run on the same code, packages and threads, a rerun gives the same weights, byte for byte.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from clm_explore.config import ConfigError, DataConfig, FinetuneConfig, from_dict, unknown_keys
from clm_explore.data import AnnotatedData, DataError, data_digest, load_data
from clm_explore.modeling import ModelSourceError
from clm_explore.provenance import code_differences
from clm_explore.runs import BESIDE_CONFIG, read_json_object, recorded_data_paths, run_folder

RECORD = "clm_run.json"


@dataclass
class RerunPlan:
    """What a rerun trains: ``finetune(plan.data, plan.cfg, out_dir, source=plan.source, scores=plan.scores)``."""

    run: Path
    """The run folder it reruns."""
    cfg: FinetuneConfig
    data: AnnotatedData
    source: str
    scores: Path | None
    """The run's own copy of the scores it was given (its sensitivity/ folder), or None: it scored for itself."""
    notes: list[str] = field(default_factory=list)
    """What may make the rerun differ: other code or packages, a record without its data's digest."""


def rerun_plan(run: Any, data: Any = None, **changes: Any) -> RerunPlan:
    """The plan to train ``run`` again.

    Args:
        run: a run folder, a run id or a ``finetune`` result.
        data: the data to read instead of the recorded path (an app upload has none on disk; a run made from a
            DataFrame: that DataFrame); it must hold the same rows, read with the run's recorded options.
        changes: ``FinetuneConfig`` fields to change (``seed=1``, ``device="cpu"``); the rest are the run's.

    Raises:
        ModelSourceError: not a run folder, or one whose record cannot be read.
        ConfigError: settings this version does not know (a newer one wrote them), or a change it does not take.
        DataError: the data is not on disk here, or holds other rows than the run trained on.
    """
    folder = run_folder(run)
    record = read_json_object(folder / RECORD)
    if not isinstance(record.get("config"), dict) or not record.get("method"):
        raise ModelSourceError(f"{folder} holds no {RECORD} with a run's config: it is not a run folder clm-explore "
                               "wrote, so there are no settings to train again.")
    notes: list[str] = []
    if unknown := unknown_keys(FinetuneConfig, record["config"]):
        if record.get("provenance"):  # recorded since this version: a setting unknown here is a newer version's
            raise ConfigError(f"{folder} was written by a newer clm-explore: its settings {', '.join(unknown)} are "
                              "unknown here, and a rerun without them would train another run. Upgrade clm-explore.")
        notes.append(f"the run's settings {', '.join(unknown)} (of an older version) are not read here")
    try:
        cfg = FinetuneConfig.from_dict(record["config"])
    except TypeError as exc:  # a value of the wrong kind (a hand-edited record): a ConfigError names the field
        raise ConfigError(f"{folder}'s {RECORD} holds a config this version cannot read ({exc}).") from exc
    try:
        cfg = dataclasses.replace(_unsettled_seeds(cfg) if "seed" in changes else cfg, **changes)
    except TypeError as exc:
        drawn = sorted(set(changes) & {f.name for f in dataclasses.fields(DataConfig)})
        if drawn:  # a new draw or carve is other rows: a new run, not this one trained again (the notebook review)
            raise ConfigError(f"rerun trains the run again on its own rows; {', '.join(drawn)} would read other rows "
                              f"(DataConfig's options): that is a new run, clm.finetune(clm.load_data(path, "
                              f"{drawn[0]}=...), cfg, out_dir).") from exc
        raise ConfigError(f"rerun takes changes to FinetuneConfig's fields ({exc}).") from exc
    if said := code_differences(record.get("provenance")):
        notes.append(f"this run was made by other code or packages ({'; '.join(said)}): its figures may differ")
    if not record.get("provenance"):
        notes.append("the run does not record the code that made it (older than that record): its figures may differ")
    loaded = _recorded_data(folder, record, data, notes)
    return RerunPlan(folder, cfg, loaded, str(record.get("source") or "default"), _given_scores(folder, record), notes)


def _unsettled_seeds(cfg: FinetuneConfig) -> FinetuneConfig:
    """``cfg`` with the mask's seed unset where the run settled it from its own seed (``recorded_config``), so that
    another seed draws other rows, as ``finetune --seed`` does (the diff review: a rerun at seed 1 drew seed 0's
    random rows). The scoring's seed stays: its default is a fixed 0, which a run's seed does not change."""
    mask_seed = None if cfg.mask.seed == cfg.seed else cfg.mask.seed
    return dataclasses.replace(cfg, mask=dataclasses.replace(cfg.mask, seed=mask_seed))


SEED_KEYS = ("seed", "device")
"""What a recorded config may differ in between seeds of one setting: the seed, and where the run trained."""


ADDED_SETTINGS = {"truncation_side": "right"}
"""Settings a run recorded before they existed, as it ran (a run of an older version and its reruns' seeds are one
setting)."""


def seedless_settings(config: dict[str, Any]) -> dict[str, Any]:
    """A run's recorded config (clm_run.json's, or the registry's with its ``source``) without what differs between
    seeds of one setting (``SEED_KEYS``, and a mask seed that the run settled to its own seed) and without its data
    (``data``, ``data_digest``: compared by ``same_data``). Two runs are seeds of one setting when these are equal
    and their data is the same (``same_setting``)."""
    settings = {key: value for key, value in config.items() if key not in (*SEED_KEYS, "data", "data_digest")}
    settings = {**ADDED_SETTINGS, **settings}
    if isinstance(settings.get("sensitivity"), dict):
        settings["sensitivity"] = {**ADDED_SETTINGS, **settings["sensitivity"]}
    mask = settings.get("mask")
    if isinstance(mask, dict) and mask.get("seed") == config.get("seed"):
        settings["mask"] = {**mask, "seed": None}
    return settings


def same_data(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two recorded configs name the same data: by their splits' digest where both recorded one (a CLI run
    names its data by the path typed, an app run by the app's key, an API run by the path given: the same rows, three
    names), else by the data's name (a run registered before the digest was recorded)."""
    digest_a, digest_b = a.get("data_digest"), b.get("data_digest")
    if digest_a and digest_b:
        return digest_a == digest_b
    return a.get("data") == b.get("data")


def same_setting(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two recorded configs are seeds of one setting: equal but for their seeds and device, on the same data
    (the faces review: a CLI run's seeds and the app's seeds of it read as two settings, and the Runs page offered the
    seeds it had just trained again)."""
    return seedless_settings(a) == seedless_settings(b) and same_data(a, b)


def next_seeds(taken: set[int], count: int) -> list[int]:
    """The ``count`` lowest seeds (from 0) that are not ``taken``."""
    seeds: list[int] = []
    seed = 0
    while len(seeds) < count:
        if seed not in taken:
            seeds.append(seed)
        seed += 1
    return seeds


def seed_variants(config: dict[str, Any], seeds: list[int]) -> list[FinetuneConfig]:
    """A recorded config trained again at each of ``seeds``: the mask's settled seed unset so that each draws its own
    rows, as ``finetune --seed`` does.

    Raises:
        ConfigError: settings this version does not know (a newer one wrote them) or cannot read.
    """
    if unknown := unknown_keys(FinetuneConfig, {k: v for k, v in config.items() if k not in BESIDE_CONFIG}):
        raise ConfigError(f"the run's settings {', '.join(unknown)} are unknown here (a newer clm-explore wrote "
                          "them): training it at other seeds without them would train another setting.")
    try:
        cfg = _unsettled_seeds(FinetuneConfig.from_dict(config))
    except TypeError as exc:  # a value of the wrong kind (a hand-edited record)
        raise ConfigError(f"the run's config cannot be read by this version ({exc}).") from exc
    return [dataclasses.replace(cfg, seed=seed) for seed in seeds]


def _recorded_data(folder: Path, record: dict[str, Any], given: Any, notes: list[str]) -> AnnotatedData:
    """The run's rows, read as it read them, and checked against its digest. ``given``: a path, or (in Python) the
    DataFrame or dict of DataFrames a run made from one was given."""
    if isinstance(given, AnnotatedData):  # already read with its own options: the recorded ones could not apply
        raise DataError("rerun reads the run's data with the options it recorded (its columns, carve and draw): pass "
                        "the file, folder or DataFrame it was read from, not AnnotatedData.")
    if isinstance(given, pd.DataFrame | dict):
        path: Any = given
    else:
        path = Path(given) if given is not None else next((p for p in recorded_data_paths(record) if p.exists()),
                                                          None)
    if path is None:
        raise DataError(f"{folder}'s data ({record.get('data') or 'not recorded'}) is not a file or folder here (an "
                        "upload in the app, a DataFrame, or moved): pass it (--data PATH; in Python data= takes the "
                        "path or the DataFrame) to train the run again.")
    options = record.get("data_config")
    if isinstance(options, dict):
        if unknown := unknown_keys(DataConfig, options):
            raise ConfigError(f"{folder}'s data options {', '.join(unknown)} are unknown here: it was written by a "
                              "newer clm-explore. Upgrade clm-explore.")
        cfg = from_dict(DataConfig, options)
    else:
        cfg = DataConfig()
        notes.append("the run does not record the options its data was read with (older than that record): read "
                     "with the defaults, which find the text and label columns by their names")
    data = load_data(path, cfg)
    recorded, now = record.get("data_digest"), data_digest(data)
    if recorded and recorded != now:
        raise DataError(f"{path} does not hold the rows {folder.name} was trained on (data digest {recorded} there, "
                        f"{now} now): the file changed since, or it is another. A rerun on other rows is a new run: "
                        "launch one with finetune.")
    if not recorded:
        notes.append("the run does not record its data's digest (older than that record): the rows cannot be checked")
    return data


def _given_scores(folder: Path, record: dict[str, Any]) -> Path | None:
    """The run's copy of the scores it was given (its sensitivity/ folder); it trained their rows, which scores made
    again at the run's own settings may not give (the scoring reads the run's length, not the scores')."""
    given = record.get("scores_from") or read_json_object(folder / "metrics.json").get("scores_from")
    own = folder / "sensitivity"
    return own if given and (own / "sensitivity.json").is_file() else None


def rerun(run: Any, out_dir: str | Path, *, data: Any = None, overwrite: bool = False,
          progress: bool | None = None, **changes: Any) -> Any:
    """Train ``run`` again into ``out_dir`` from its own record (``rerun_plan``: its settings, model, rows read with
    its options, the scores it was given), with ``changes`` to FinetuneConfig's fields (``seed=1``). What may make
    the figures differ (other code or packages, an older record) is said in a warning. Returns the
    ``FinetuneResult``; ``clm_explore.compare_run_groups`` or the two metrics tell what changed."""
    import warnings

    from clm_explore.training import finetune

    plan = rerun_plan(run, data, **changes)
    for note in plan.notes:
        warnings.warn(note, stacklevel=2)
    return finetune(plan.data, plan.cfg, out_dir, source=plan.source, overwrite=overwrite, progress=progress,
                    scores=plan.scores)
