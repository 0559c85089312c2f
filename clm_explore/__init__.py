"""clm-explore: token-driven sparse finetuning of small language models for text classification.

A notebook session, end to end::

    import clm_explore as clm

    data = clm.load_data("sample")  # the shipped sample (sample_data/banking77_20 in the checkout)
    loaded = clm.load_model("default", data.labels)
    clm.find_label_issues(loaded, data).issues  # rows whose label their own text disputes, most disputed first
    task_tokens = clm.mine_task_tokens(data.train.text.tolist(), data.train.label.tolist(), loaded.tokenizer)
    report = clm.compute_sensitivity(loaded, data, task_tokens)
    selection = clm.select_mask(report, clm.MaskConfig(budget=0.01))  # what a budget selects (< 100 ms)
    # the rows that selection shows, trained from the report's scores and warmed-up head (without scores=,
    # finetune mines and scores again from its config); the mask options go in cfg.mask
    cfg = clm.FinetuneConfig(method="sparse", mask=clm.MaskConfig(budget=0.01))
    result = clm.finetune(data, cfg, "runs/my-sparse", source="default", scores=report)
    clm.predict("runs/my-sparse", ["my card has not arrived"])  # probabilities, a column per label
    clm.label_file("runs/my-sparse", "new_tickets.csv")  # a row per text: label, probability, runner-up
    clm.evaluate("runs/my-sparse", "new_annotations.csv").to_frame()  # scored on labelled rows: F1 per label
    print(clm.model_card("runs/my-sparse"))  # its README.md: the Hub's model card, written with the run
    clm.RunStore().register_folder("runs/my-sparse")  # listed in the app's Runs and Compare pages
    run = clm.load_run("runs/my-sparse")
    clm.explain(run.model, run.tokenizer, "my card has not arrived")  # word attributions (Integrated Gradients)
    clm.layer_similarity("runs/my-sparse").table  # linear CKA per layer against the base model it was trained from
    clm.head_attention("runs/my-sparse", "my card has not arrived").table()  # heads: task-token attention, mask share
    full = clm.finetune(data, clm.FinetuneConfig(method="full"), "runs/my-full", source="default")
    clm.write_report(clm.case_study("runs/my-sparse", "runs/my-full"), "report.html")  # the case study, one file
    clm.rerun("runs/my-sparse", "runs/my-sparse-again")  # trained again from its record: the same weights
    clm.export_run("runs/my-sparse", "serve/my-sparse", dtype="float16")  # what serving needs, no test texts
    clm.apply_delta("runs/my-sparse")  # the run rebuilt from its base model and delta.safetensors (a ~1 MB patch)

Is sparse ahead of full finetuning on this data, or level? Seeds of each, compared with a 95% interval::

    runs = {m: [clm.finetune(data, clm.FinetuneConfig(method=m, seed=s), f"runs/{m}-{s}") for s in range(3)]
            for m in ("sparse", "full")}
    clm.compare_run_groups([r.metrics for r in runs["sparse"]], [r.metrics for r in runs["full"]])

The method x budget x seed grid, as ``clm-explore bench`` runs it (each cell a ``finetune`` process)::

    result = clm.run_grid("sample", clm.BenchConfig(methods=("full", "sparse"), seeds=3), "bench/out")
    result.summary  # mean and std per method and budget; result.files names the CSV and the HTML report

Every error the API raises for a user's input is exported too (``except clm.DataError``): ``DataError`` (the data),
``ConfigError`` (a config's values), ``ModelSourceError`` (a model or run that cannot be loaded), ``RunFolderError``
(an output folder that cannot be written), ``RunStoreError``, ``AttributionError``, ``ReportPathError``,
``ChangesError``, ``ModelCardError``, ``TooFewRowsError``, ``LayerViewError``, ``ExportError``.

Names are imported lazily, so ``import clm_explore`` (and the CLI's ``--help``) stays fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what a type checker and an editor see; at run time the names are imported on first use
    from clm_explore.attribution import (
        AttributionError as AttributionError,
        TokenAttribution as TokenAttribution,
        explain as explain,
    )
    from clm_explore.batches import (
        Evaluation as Evaluation,
        evaluate as evaluate,
        label_file as label_file,
        predict as predict,
        predict_proba as predict_proba,
        prediction_table as prediction_table,
    )
    from clm_explore.bench import (
        BenchConfig as BenchConfig,
        BenchError as BenchError,
        BenchResult as BenchResult,
        run_grid as run_grid,
    )
    from clm_explore.bench_results import (
        compare_run_groups as compare_run_groups,
    )
    from clm_explore.cards import (
        ModelCardError as ModelCardError,
        model_card as model_card,
        write_model_card as write_model_card,
    )
    from clm_explore.casestudy import (
        CaseStudy as CaseStudy,
        case_study as case_study,
    )
    from clm_explore.changes import (
        ChangesError as ChangesError,
        WeightChanges as WeightChanges,
        weight_changes as weight_changes,
    )
    from clm_explore.config import (
        AttributionConfig as AttributionConfig,
        ConfigError as ConfigError,
        DataConfig as DataConfig,
        FinetuneConfig as FinetuneConfig,
        LabelAuditConfig as LabelAuditConfig,
        MaskConfig as MaskConfig,
        MiningConfig as MiningConfig,
        SensitivityConfig as SensitivityConfig,
    )
    from clm_explore.data import (
        AnnotatedData as AnnotatedData,
        DataError as DataError,
        data_report as data_report,
        load_data as load_data,
    )
    from clm_explore.datareport import (
        DataReport as DataReport,
    )
    from clm_explore.exports import (
        ExportError as ExportError,
        apply_delta as apply_delta,
        export_run as export_run,
    )
    from clm_explore.label_issues import (
        LabelIssues as LabelIssues,
        TooFewRowsError as TooFewRowsError,
        find_label_issues as find_label_issues,
        relabelled as relabelled,
        splits_csv as splits_csv,
        splits_zip as splits_zip,
    )
    from clm_explore.layer_views import (
        HeadAttention as HeadAttention,
        LayerSimilarity as LayerSimilarity,
        LayerViewError as LayerViewError,
        head_attention as head_attention,
        layer_similarity as layer_similarity,
    )
    from clm_explore.masks import (
        MaskSelection as MaskSelection,
        select_mask as select_mask,
    )
    from clm_explore.mining import (
        MergeReport as MergeReport,
        TaskTokens as TaskTokens,
        TokenGroup as TokenGroup,
        adaptive_tokenization as adaptive_tokenization,
        mine_task_tokens as mine_task_tokens,
    )
    from clm_explore.modeling import (
        LoadedModel as LoadedModel,
        ModelSourceError as ModelSourceError,
        load_model as load_model,
        load_run as load_run,
    )
    from clm_explore.report import (
        ReportPathError as ReportPathError,
        build_report as build_report,
        write_report as write_report,
    )
    from clm_explore.reruns import (
        rerun as rerun,
        rerun_plan as rerun_plan,
    )
    from clm_explore.runs import (
        RunFolderError as RunFolderError,
        RunRecord as RunRecord,
        RunStore as RunStore,
        RunStoreError as RunStoreError,
    )
    from clm_explore.sensitivity import (
        SensitivityReport as SensitivityReport,
        compute_sensitivity as compute_sensitivity,
    )
    from clm_explore.training import (
        FinetuneResult as FinetuneResult,
        StepInfo as StepInfo,
        finetune as finetune,
    )

_EXPORTS = {
    "AnnotatedData": "clm_explore.data",
    "AttributionConfig": "clm_explore.config",
    "AttributionError": "clm_explore.attribution",
    "BenchConfig": "clm_explore.bench",
    "BenchError": "clm_explore.bench",
    "BenchResult": "clm_explore.bench",
    "CaseStudy": "clm_explore.casestudy",
    "ChangesError": "clm_explore.changes",
    "ConfigError": "clm_explore.config",
    "DataConfig": "clm_explore.config",
    "DataError": "clm_explore.data",
    "DataReport": "clm_explore.datareport",
    "Evaluation": "clm_explore.batches",
    "FinetuneConfig": "clm_explore.config",
    "FinetuneResult": "clm_explore.training",
    "HeadAttention": "clm_explore.layer_views",
    "LabelAuditConfig": "clm_explore.config",
    "LabelIssues": "clm_explore.label_issues",
    "LayerSimilarity": "clm_explore.layer_views",
    "LayerViewError": "clm_explore.layer_views",
    "LoadedModel": "clm_explore.modeling",
    "MaskConfig": "clm_explore.config",
    "MaskSelection": "clm_explore.masks",
    "MergeReport": "clm_explore.mining",
    "MiningConfig": "clm_explore.config",
    "ModelCardError": "clm_explore.cards",
    "ModelSourceError": "clm_explore.modeling",
    "ReportPathError": "clm_explore.report",
    "RunFolderError": "clm_explore.runs",
    "RunRecord": "clm_explore.runs",
    "RunStore": "clm_explore.runs",
    "RunStoreError": "clm_explore.runs",
    "SensitivityConfig": "clm_explore.config",
    "SensitivityReport": "clm_explore.sensitivity",
    "StepInfo": "clm_explore.training",
    "TaskTokens": "clm_explore.mining",
    "TokenAttribution": "clm_explore.attribution",
    "TokenGroup": "clm_explore.mining",
    "TooFewRowsError": "clm_explore.label_issues",
    "WeightChanges": "clm_explore.changes",
    "adaptive_tokenization": "clm_explore.mining",
    "build_report": "clm_explore.report",
    "case_study": "clm_explore.casestudy",
    "compare_run_groups": "clm_explore.bench_results",
    "compute_sensitivity": "clm_explore.sensitivity",
    "data_report": "clm_explore.data",
    "evaluate": "clm_explore.batches",
    "explain": "clm_explore.attribution",
    "apply_delta": "clm_explore.exports",
    "export_run": "clm_explore.exports",
    "ExportError": "clm_explore.exports",
    "find_label_issues": "clm_explore.label_issues",
    "finetune": "clm_explore.training",
    "head_attention": "clm_explore.layer_views",
    "label_file": "clm_explore.batches",
    "layer_similarity": "clm_explore.layer_views",
    "load_data": "clm_explore.data",
    "load_model": "clm_explore.modeling",
    "load_run": "clm_explore.modeling",
    "mine_task_tokens": "clm_explore.mining",
    "model_card": "clm_explore.cards",
    "predict": "clm_explore.batches",
    "predict_proba": "clm_explore.batches",
    "prediction_table": "clm_explore.batches",
    "relabelled": "clm_explore.label_issues",
    "rerun": "clm_explore.reruns",
    "rerun_plan": "clm_explore.reruns",
    "run_grid": "clm_explore.bench",
    "select_mask": "clm_explore.masks",
    "splits_csv": "clm_explore.label_issues",
    "splits_zip": "clm_explore.label_issues",
    "weight_changes": "clm_explore.changes",
    "write_model_card": "clm_explore.cards",
    "write_report": "clm_explore.report",
}

__all__ = sorted(_EXPORTS)  # built from the table above so the two cannot drift


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'clm_explore' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
