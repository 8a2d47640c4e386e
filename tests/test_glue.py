"""GLUE loading: the real TSVs in ../shared/data/glue, synthetic MNLI/QQP/QNLI, and every error path."""
from collections import Counter

import pytest

from lth.core.errors import LthError
from lth.tasks import TASK_NAMES, load_task
from lth.tasks.glue import GLUE_TASKS, load_glue

# Published GLUE sizes and train label counts (README of the shared data, GLUE paper).
REAL = {
    "sst2": ("SST-2", 67349, 872, {0: 29780, 1: 37569}),
    "cola": ("CoLA", 8551, 1043, {0: 2528, 1: 6023}),
    "mrpc": ("MRPC", 3668, 408, {0: 1194, 1: 2474}),
    "rte": ("RTE", 2490, 277, {0: 1249, 1: 1241}),
    "stsb": ("STS-B", 5749, 1500, None),
    "wnli": ("WNLI", 635, 71, {0: 323, 1: 312}),
}


@pytest.mark.parametrize("name", list(REAL))
def test_real_glue_row_counts_and_labels(shared_data, name):
    folder, n_train, n_dev, counts = REAL[name]
    data = load_glue(name, str(shared_data / "glue" / folder))
    assert (len(data.train), list(data.evals), len(data.evals["dev"])) == (n_train, ["dev"], n_dev)
    for split in (data.train, data.evals["dev"]):
        assert len(split.labels) == len(split.texts) == len(split)
        assert all(isinstance(t, str) and t for t in split.texts)
    if counts is None:
        assert data.regression and data.metrics == ("pearson", "spearman")
        assert all(0.0 <= y <= 5.0 for y in data.train.labels)
    else:
        assert dict(Counter(data.train.labels)) == counts
        assert set(data.evals["dev"].labels) == {0, 1}


def test_rte_from_glue_root(shared_data):
    data = load_glue("rte", str(shared_data / "glue"))
    assert data.label_names == ["entailment", "not_entailment"]
    assert data.evals["dev"].labels[0] == 1  # first dev row is not_entailment
    assert data.evals["dev"].texts[0].startswith("Dana Reeve, the widow")
    assert data.evals["dev"].pairs[0] == "Christopher Reeve had an accident."


def test_stsb_scores_are_floats(shared_data):
    data = load_task("stsb", str(shared_data / "glue"))
    assert data.evals["dev"].labels[:2] == [5.0, 4.75]
    assert data.evals["dev"].pairs[0] == "A man wearing a hard hat is dancing."


def test_mrpc_bom_header_and_first_row(shared_data):
    data = load_glue("mrpc", str(shared_data / "glue" / "MRPC"))
    assert data.train.labels[0] == 1 and data.train.texts[0].startswith("Amrozi accused")
    assert data.train.pairs[0].startswith("Referring to him as only")
    assert data.metrics == ("accuracy", "f1")


def test_cola_headerless_and_no_final_newline(shared_data):
    data = load_glue("cola", str(shared_data / "glue"))
    assert data.train.texts[0].startswith("Our friends won't buy this analysis")
    assert data.evals["dev"].texts[-1].endswith("Bill about himself.")
    assert data.train.pairs is None and data.metrics == ("mcc",)


def test_mrpc_keeps_bare_quotes(shared_data):
    # A quote-aware reader merges rows at a field starting with a bare " (MRPC dev: 390 rows, not 408).
    data = load_glue("mrpc", str(shared_data / "glue"))
    assert data.evals["dev"].pairs[0] == '" The foodservice pie business does not fit our long-term growth strategy .'
    assert sum('"' in t for t in data.train.texts + data.train.pairs) > 100


def test_limits_take_the_first_rows(shared_data):
    full = load_glue("rte", str(shared_data / "glue"))
    data = load_glue("rte", str(shared_data / "glue"), train_limit=5, eval_limit=3)
    assert data.train.texts == full.train.texts[:5] and data.train.labels == full.train.labels[:5]
    assert data.evals["dev"].pairs == full.evals["dev"].pairs[:3]


def _write(path, lines, final_newline=True):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + ("\n" if final_newline else ""), encoding="utf-8")


MNLI_HEADER = ("index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\t"
               "sentence1_parse\tsentence2_parse\tsentence1\tsentence2\tlabel1\tgold_label")


def _mnli_row(i, premise, hypothesis, label):
    return f"{i}\t1\t1e\tfiction\t( x )\t( y )\t(ROOT x)\t(ROOT y)\t{premise}\t{hypothesis}\t{label}\t{label}"


def test_synthetic_mnli_has_two_dev_splits(tmp_path):
    folder = tmp_path / "glue" / "MNLI"
    _write(folder / "train.tsv", [MNLI_HEADER, _mnli_row(0, 'He said "hi', "He spoke.", "entailment"),
                                  _mnli_row(1, "A cat.", "A dog.", "contradiction")])
    _write(folder / "dev_matched.tsv", [MNLI_HEADER, _mnli_row(0, "P1", "H1", "neutral")])
    _write(folder / "dev_mismatched.tsv", [MNLI_HEADER, _mnli_row(0, "P2", "H2", "contradiction"),
                                           _mnli_row(1, "P3", "H3", "entailment")])
    data = load_task("mnli", str(tmp_path / "glue"))
    assert data.train.texts == ['He said "hi', "A cat."] and data.train.labels == [1, 0]
    assert list(data.evals) == ["matched", "mismatched"]
    assert data.evals["matched"].labels == [2]
    assert data.evals["mismatched"].pairs == ["H2", "H3"] and data.evals["mismatched"].labels == [0, 1]


def test_synthetic_qqp_and_qnli(tmp_path):
    qqp = tmp_path / "QQP"
    header = "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate"
    _write(qqp / "train.tsv", [header, "0\t1\t2\tWhy?\tHow?\t0", "1\t3\t4\tWhat?\tWhat is it?\t1"])
    _write(qqp / "dev.tsv", [header, "5\t6\t7\tWho?\tWhom?\t1"])
    data = load_glue("qqp", str(qqp))
    assert (data.train.texts, data.train.pairs, data.train.labels) == (["Why?", "What?"], ["How?", "What is it?"], [0, 1])
    assert data.metrics == ("accuracy", "f1")
    qnli = tmp_path / "QNLI"
    _write(qnli / "train.tsv", ["index\tquestion\tsentence\tlabel", "0\tQ?\tS.\tnot_entailment"])
    _write(qnli / "dev.tsv", ["index\tquestion\tsentence\tlabel", "0\tQ2?\tS2.\tentailment"], final_newline=False)
    data = load_glue("qnli", str(tmp_path))
    assert data.train.labels == [1] and data.evals["dev"].texts == ["Q2?"] and data.evals["dev"].labels == [0]


def _rte(tmp_path, dev_lines):
    header = "index\tsentence1\tsentence2\tlabel"
    _write(tmp_path / "RTE" / "train.tsv", [header, "0\ta\tb\tentailment"])
    _write(tmp_path / "RTE" / "dev.tsv", [header] + dev_lines)
    return str(tmp_path / "RTE")


def test_malformed_row_names_file_line_and_counts(tmp_path):
    # line 1 header, 2 ok, 3 empty (skipped but counted), 4 has a tab missing
    folder = _rte(tmp_path, ["0\ta\tb\tentailment", "", "1\ta b\tnot_entailment"])
    with pytest.raises(LthError) as err:
        load_glue("rte", folder)
    message = str(err.value)
    assert "dev.tsv:4:" in message and "expected 4 tab-separated fields, found 3" in message


def test_unknown_label_names_file_line_and_allowed(tmp_path):
    folder = _rte(tmp_path, ["0\ta\tb\tentailment", "1\ta\tb\tcontradiction"])
    with pytest.raises(LthError, match=r"dev\.tsv:3: label 'contradiction'.*entailment, not_entailment"):
        load_glue("rte", folder)


def test_missing_folder_and_missing_file(tmp_path):
    with pytest.raises(LthError, match="does not exist"):
        load_glue("rte", str(tmp_path / "nowhere"))
    with pytest.raises(LthError, match=r"train\.tsv not found.*RTE"):
        load_glue("rte", str(tmp_path))
    _write(tmp_path / "SST-2" / "train.tsv", ["sentence\tlabel", "good\t1"])
    with pytest.raises(LthError, match=r"SST-2[/\\]dev\.tsv not found"):
        load_glue("sst2", str(tmp_path))


def test_wrong_header_column(tmp_path):
    _write(tmp_path / "train.tsv", ["text\tlabel", "good\t1"])
    _write(tmp_path / "dev.tsv", ["text\tlabel", "bad\t0"])
    with pytest.raises(LthError, match="has no column 'sentence'"):
        load_glue("sst2", str(tmp_path))


def test_unknown_names():
    with pytest.raises(LthError, match="unknown task 'glu'.*cola.*bbc"):
        load_task("glu")
    with pytest.raises(LthError, match="unknown GLUE task 'mnli-mm'.*wnli"):
        load_glue("mnli-mm", None)


def test_registry_covers_glue():
    assert set(GLUE_TASKS) == {"cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli"}
    assert set(TASK_NAMES) == set(GLUE_TASKS) | {"bbc"}
    assert all(t.metrics[0] in ("accuracy", "mcc", "pearson") for t in GLUE_TASKS.values())


def test_hub_errors_become_lth_errors(monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("no network\nsecond line")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(LthError, match=r"could not download GLUE rte .*ConnectionError: no network\);.*--data"):
        load_task("rte")


def test_hub_mnli_labels_are_mapped_to_tsv_order(monkeypatch):
    import datasets

    def fake(path, name):
        assert (path, name) == ("nyu-mll/glue", "mnli")
        split = datasets.Dataset.from_dict({"premise": ["p0", "p1", "p2"], "hypothesis": ["h0", "h1", "h2"],
                                            "label": [0, 1, 2], "idx": [0, 1, 2]})
        return {"train": split, "validation_matched": split, "validation_mismatched": split}

    monkeypatch.setattr(datasets, "load_dataset", fake)
    data = load_glue("mnli", None, train_limit=2)
    # hub ids: 0 entailment, 1 neutral, 2 contradiction; ours: contradiction, entailment, neutral
    assert data.train.labels == [1, 2] and data.train.pairs == ["h0", "h1"]
    assert data.evals["mismatched"].labels == [1, 2, 0]
