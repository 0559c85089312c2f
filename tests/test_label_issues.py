"""The label audit: confident learning over out-of-fold probe probabilities flags the rows whose label was changed."""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pytest
import torch

from clm_explore.cli import main
from clm_explore.cli.data_cmds import format_audit
from clm_explore.config import ConfigError, LabelAuditConfig
from clm_explore.data import load_data
from clm_explore.label_issues import LabelIssues, confident_other_label, find_label_issues
from clm_explore.modeling import load_model

# Four labels, each with words of its own (all whole words of the tiny model's vocabulary), two shared fillers.
WORDS = {"card": "card cards visa mastercard debit credit", "cash": "cash atm withdraw withdrawal machine withdrew",
         "rate": "rate exchange currency currencies foreign pound", "top": "topping topped balance funds deposit salary"}
FILLER = ["please", "help", "what", "why", "when", "where", "still"]
FLIPPED = {5: "cash", 47: "rate", 99: "top", 150: "card"}  # train rows whose label is changed, and to what


def rows(per_label: int, rng: np.random.Generator) -> pd.DataFrame:
    texts = [(" ".join([*rng.choice(words.split(), 4), *rng.choice(FILLER, 2)]), label)
             for label, words in WORDS.items() for _ in range(per_label)]
    return pd.DataFrame(texts, columns=["text", "label"])


@pytest.fixture(scope="module")
def splits() -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(0)
    train, validation, test = rows(40, rng), rows(10, rng), rows(10, rng)
    for row, label in FLIPPED.items():
        train.loc[row, "label"] = label
    return {"train": train, "validation": validation, "test": test}


def test_a_row_is_flagged_only_when_another_label_is_confidently_its_own():
    given = np.array([0, 0, 0, 1, 1, 1])
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.2, 0.8],  # label 0's threshold 0.633, label 1's 0.633
                      [0.3, 0.7], [0.1, 0.9], [0.7, 0.3]])
    assert confident_other_label(probs, given).tolist() == [-1, -1, 1, -1, -1, 0]
    # Thresholds 0.5 and 0.575: the third row reaches neither (no confident label), the others their own.
    unsure = np.array([[0.5, 0.5], [0.5, 0.5], [0.45, 0.55], [0.4, 0.6]])
    assert confident_other_label(unsure, np.array([0, 0, 1, 1])).tolist() == [-1, -1, -1, -1]
    # Over label 1's threshold (0.2) but most probable as its own: not flagged, as cleanlab's filter drops it too.
    own_top = np.array([[0.9, 0.1], [0.9, 0.1], [0.55, 0.45], [0.8, 0.2], [0.8, 0.2]])
    assert confident_other_label(own_top, np.array([0, 0, 0, 1, 1])).tolist() == [-1, -1, -1, 0, 0]
    # Two labels confident (0 and 2): the guess is the most probable label, 1, as cleanlab's confident joint has it.
    several = np.array([[0.30, 0.40, 0.30], [0.20, 0.10, 0.70], [0.05, 0.90, 0.05], [0.60, 0.20, 0.20]])
    assert confident_other_label(several, np.array([0, 0, 1, 2])).tolist() == [1, 2, -1, 0]
    # Label 2's own row gives it 0: a threshold of 0 would make the first row "confident" of it at probability 0.
    never = np.array([[0.3, 0.7, 0.0], [0.9, 0.1, 0.0], [0.05, 0.95, 0.0], [0.5, 0.5, 0.0]])
    assert confident_other_label(never, np.array([0, 0, 1, 2])).tolist() == [-1, -1, -1, -1]


def test_changed_labels_are_flagged_first_and_nothing_else(splits):
    loaded = load_model("tiny-random", sorted(WORDS), seed=0)
    before = {n: p.detach().clone() for n, p in loaded.model.named_parameters()}
    progress = []
    result = find_label_issues(loaded, load_data(splits), on_progress=lambda *step: progress.append(step))
    flagged = result.issues
    read = [done for phase, done, total in progress if phase == "reading the texts" and total == 240]
    assert read == sorted(read) and read[-1] == 240 and len(read) == 4  # batches of 64
    assert [s for s in progress if s[0] == "probing the folds"] == [("probing the folds", i, 5) for i in range(6)]
    assert list(flagged.columns) == ["split", "row", "text", "label", "suggested", "label_prob", "suggested_prob"]
    assert result.checked == 240 and result.probe_accuracy > 0.9
    assert set(flagged["split"]) == {"train"} and set(flagged["row"]) <= set(FLIPPED)  # nothing else flagged
    assert len(flagged) >= 3  # of the 4 changed rows
    original = list(WORDS)  # train holds 40 rows of each label, in WORDS' order, before the change
    assert all(suggested == original[row // 40] for row, suggested in zip(flagged["row"], flagged["suggested"],
                                                                          strict=True))
    assert flagged["label_prob"].is_monotonic_increasing and (flagged["suggested_prob"] > flagged["label_prob"]).all()
    # The model is read, not changed, and left in the mode it was in.
    assert all(torch.equal(p, before[n]) for n, p in loaded.model.named_parameters())
    loaded.model.train()
    copies = dict(splits, test=pd.concat([splits["test"], splits["train"].loc[list(FLIPPED)]], ignore_index=True))
    leaked = find_label_issues(loaded, load_data(copies)).issues  # a copy of each wrong row, as wrong, in test
    assert loaded.model.training
    assert set(leaked.loc[leaked["split"] == "train", "row"]) == set(flagged["row"])  # a copy does not vouch for it
    assert set(leaked.loc[leaked["split"] == "test", "row"]) == {40 + list(FLIPPED).index(r) for r in flagged["row"]}


def test_rare_labels_are_named_and_too_few_refused(splits):
    loaded = load_model("tiny-random", sorted(WORDS), seed=0)
    data = load_data(splits)
    # 'top' keeps 3 train rows of its own and row 99 changed to it: 4, under the 5 folds.
    rare = load_data({"train": splits["train"].iloc[:123], "validation": splits["validation"], "test": splits["test"]})
    result = find_label_issues(loaded, rare, LabelAuditConfig(splits=("train",)))
    assert result.checked == 119 and result.notes == [
        "4 row(s) of 1 label(s) with fewer than 5 different texts were not audited: top"]
    assert "top" not in set(result.issues["label"])
    copies = dict(splits, train=splits["train"].assign(  # 'cash' written as one text 40 times: one fold's worth
        text=lambda f: f["text"].where(f["label"] != "cash", "cash atm withdraw withdrawal machine withdrew")))
    result = find_label_issues(loaded, load_data(copies), LabelAuditConfig(splits=("train",)))
    assert result.notes == ["40 row(s) of 1 label(s) with fewer than 5 different texts were not audited: cash"]
    with pytest.raises(ValueError, match=r"needs two labels with at least 11 different texts .* the validation rows "
                       r"have 0 such label\(s\)\.$"):  # 10 validation rows each
        find_label_issues(loaded, data, LabelAuditConfig(splits=("validation",), folds=11))
    with pytest.raises(ConfigError, match="folds must be in 2..20"):
        LabelAuditConfig(folds=1)
    with pytest.raises(ConfigError, match="each once"):  # a split twice: each row in two folds, vouching for itself
        LabelAuditConfig(splits=("train", "train"))
    sampled = find_label_issues(loaded, data, LabelAuditConfig(max_rows=100))
    assert sampled.checked == 100 and sampled.notes == ["100 of 240 rows audited (a seeded sample; "
                                                        "LabelAuditConfig.max_rows)"]
    with pytest.raises(TypeError, match="find_label_issues"):
        find_label_issues("tiny-random", data)


def test_cli_audit_prints_json_and_writes_the_flagged_rows(capsys, splits, tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    for name, frame in splits.items():
        frame.to_csv(folder / f"{name}.csv", index=False)
    out = tmp_path / "issues.csv"
    code = main(["audit", str(folder), "--model", "tiny-random", "--out", str(out), "--json"])
    printed = capsys.readouterr()
    shown = json.loads(printed.out)
    assert "reading the texts 240/240" in printed.err and "probing the folds 5/5" in printed.err  # stderr: not a tty
    assert code == 0 and shown["checked"] == 240 and shown["flagged"] == len(shown["issues"]) >= 3
    assert pd.read_csv(out)["row"].tolist() == [issue["row"] for issue in shown["issues"]]
    out.write_text(out.read_text())  # an earlier audit's CSV is replaced; any other file is refused, left as it was
    assert main(["audit", str(folder), "--model", "tiny-random", "--out", str(out), "--show", "0"]) == 0
    assert "more (--show N" in capsys.readouterr().out
    before = (folder / "train.csv").read_text()
    for target, message in ((folder / "train.csv", "is not an earlier audit's CSV"), (tmp_path / "x.txt", ".csv file"),
                            (tmp_path / "no" / "x.csv", "does not exist")):
        assert main(["audit", str(folder), "--model", "tiny-random", "--out", str(target)]) == 2
        assert message in capsys.readouterr().err
    assert (folder / "train.csv").read_text() == before
    assert main(["audit", str(folder), "--model", "tiny-random", "--folds", "50"]) == 2
    assert "folds must be in 2..20" in capsys.readouterr().err
    assert main(["audit", str(folder), "--model", "tiny-random", "--splits", "test", "--folds", "11"]) == 2
    assert "needs two labels with at least 11 different texts" in capsys.readouterr().err


def test_accepted_suggestions_give_data_that_loads_and_zips_as_a_folder(splits, tmp_path):
    import zipfile

    from clm_explore.data import load_upload
    from clm_explore.label_issues import relabelled, splits_csv, splits_zip

    data = load_data(splits)
    flagged = find_label_issues(load_model("tiny-random", data.labels, seed=0), data).issues
    fixed = relabelled(data, flagged.iloc[:2])
    for split, row, suggested in flagged.iloc[:2][["split", "row", "suggested"]].itertuples(index=False):
        assert fixed.split(split)["label"].iloc[row] == suggested
    changed = sum((fixed.split(s)["label"] != data.split(s)["label"]).sum() for s in ("train", "validation", "test"))
    assert changed == 2 and all(len(fixed.split(s)) == len(data.split(s)) for s in ("train", "validation", "test"))
    with zipfile.ZipFile(io.BytesIO(splits_zip(fixed))) as archive:
        archive.extractall(tmp_path / "fixed")
    again = load_data(tmp_path / "fixed")  # read back as it is: the same splits, rows and labels
    for split in ("train", "validation", "test"):
        pd.testing.assert_frame_equal(again.split(split).reset_index(drop=True),
                                      fixed.split(split).reset_index(drop=True))
    (tmp_path / "fixed.csv").write_bytes(splits_csv(fixed))  # one file with a split column, as the app uses it
    for again in (load_data(tmp_path / "fixed.csv"), load_upload(splits_csv(fixed), "fixed.csv")):
        for split in ("train", "validation", "test"):
            pd.testing.assert_frame_equal(again.split(split), fixed.split(split).reset_index(drop=True))


def test_the_audit_shows_a_bar_in_a_notebook_unless_someone_listens(splits, capsys):
    """The API review: scoring and the audit ran silently for a minute while finetune showed bars."""
    data = load_data(splits)
    loaded = load_model("tiny-random", data.labels)
    cfg = LabelAuditConfig(splits=("train",))
    find_label_issues(loaded, data, cfg)
    assert "probing the folds" in capsys.readouterr().err
    heard: list[str] = []
    find_label_issues(loaded, data, cfg, on_progress=lambda phase, done, total: heard.append(phase))
    assert "probing the folds" not in capsys.readouterr().err and "probing the folds" in heard


def test_a_label_train_never_has_is_neither_audited_nor_suggested(splits):
    """The real-model review: HINT3's out-of-scope label (test only) was one more class to the probe, which suggested
    it for in-scope training rows; accepting one moved the out-of-scope label into training."""
    loaded = load_model("tiny-random", sorted(WORDS), seed=0)
    rng = np.random.default_rng(1)
    out_of_scope = rows(10, rng).assign(label="NO_NODES_DETECTED")  # test rows of every kind under one label
    data = load_data(dict(splits, test=pd.concat([splits["test"], out_of_scope], ignore_index=True)))
    result = find_label_issues(loaded, data)
    assert result.checked == 240 and "NO_NODES_DETECTED" not in set(result.issues["suggested"])
    assert result.notes == ["40 row(s) of 1 label(s) train never has were not audited, nor are they suggested "
                            "(out-of-scope queries, which runs answer by abstaining): NO_NODES_DETECTED"]


def test_the_audit_table_never_rounds_a_probability_to_certainty():
    """The real-model review: a confident probe's rows read 0.000 and 1.000, and the table ranks by the former."""
    issues = pd.DataFrame({"split": ["train"] * 3, "row": [4, 9, 2], "text": ["a", "b", "c"], "label": ["x"] * 3,
                           "suggested": ["y"] * 3, "label_prob": [2.3e-05, 0.0004, 0.25],
                           "suggested_prob": [0.99998, 0.9996, 0.7]})
    table = format_audit(LabelIssues(issues, checked=10, probe_accuracy=0.9, seconds=1.0), show=3)
    assert "2.3e-05" in table and "4.0e-04" in table and table.count(">0.999") == 2
    assert "0.250" in table and "0.700" in table and "0.000" not in table and "1.000" not in table


def test_the_audit_says_when_the_texts_are_longer_than_the_probe_reads(splits):
    """The long-text review: with each ticket's question past the 64 sub-tokens read, the audit flagged 298 of 360
    correct rows and said nothing of the cut."""
    loaded = load_model("tiny-random", sorted(WORDS), seed=0)
    data = load_data(splits)
    assert not any("sub-tokens the probe reads" in n for n in find_label_issues(loaded, data).notes)
    long = {name: frame.assign(text=frame["text"] + " please help still please help still") for name, frame in
            splits.items()}
    notes = find_label_issues(loaded, load_data(long), LabelAuditConfig(max_length=8)).notes
    said = [n for n in notes if "sub-tokens the probe reads" in n]
    assert said == ["240 of 240 texts (100%) are longer than the 8 sub-tokens the probe reads: their start alone is "
                    "read, so what their ends say is never seen and the figures may come from the cut; a longer "
                    "max_length (up to 128) reads more, at a cost in time (audit --max-length; the app's label check "
                    "reads the Finetune form's Sub-tokens read per text); truncation_side 'left' keeps their ends "
                    "instead (audit --truncation-side left; in the app, the Finetune form's 'Long texts keep their' "
                    "set to end)"], notes


def test_an_audit_longer_than_the_model_reads_is_refused_plainly(splits):
    """The diff review: --max-length 256 on a model of 128 positions raised torch's "expanded size" error."""
    loaded = load_model("tiny-random", sorted(WORDS), seed=0)
    with pytest.raises(ConfigError, match="max_length 256 is above the 128 positions a text may take in this model"):
        find_label_issues(loaded, load_data(splits), LabelAuditConfig(max_length=256))
