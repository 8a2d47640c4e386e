"""SQuAD v1.1: the official metric by hand, span recovery across windows, features, the real dev file, bad input."""
import json

import numpy as np
import pytest

from lth.core.errors import LthError
from lth.tasks.squad import eval_features, load_squad, split_articles, train_features
from lth.tasks.squadeval import exact_match, f1, normalize_answer, postprocess, squad_scores
from tiny import write_tokenizer

LOW = -10.0
HIGH = 10.0
# 40 vocab words; "superb story" occurs once, near the end, so only later windows hold it
LONG = ("the movie was good the plot was dull a film is fine the acting was poor a story is boring "
        "the movie is great a plot was awful the film was lovely the acting is bad very superb story was dull")


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tok")
    tok = write_tokenizer(folder)
    if tok.convert_tokens_to_ids("good") == tok.unk_token_id:
        # transformers 5 ignores vocab_file= and keeps only the special tokens: rebuild from the vocab it wrote
        from tokenizers.implementations import BertWordPieceTokenizer
        from transformers import BertTokenizerFast
        tok = BertTokenizerFast(tokenizer_object=BertWordPieceTokenizer(str(folder / "vocab.txt"))._tokenizer)
    assert tok.is_fast and tok.convert_tokens_to_ids("good") != tok.unk_token_id
    return tok


def example(context: str, answer: str, question: str = "the plot", qid: str = "q1") -> dict:
    return {"id": qid, "title": "t", "context": context, "question": question,
            "answers": {"text": [answer], "answer_start": [context.index(answer)]}}


def token_at(feature: dict, char: int, end: bool = False) -> int:
    """Index of the context token that starts (or ends) at this character."""
    side = 1 if end else 0
    return next(i for i, o in enumerate(feature["offsets"]) if o is not None and o[side] == char)


def logits_for(features: list[dict], targets: dict[int, tuple[int, int]]) -> tuple[list, list]:
    """LOW everywhere, HIGH at (start, end) token indices in the chosen features."""
    starts, ends = [], []
    for i, feature in enumerate(features):
        s, e = np.full(len(feature["input_ids"]), LOW), np.full(len(feature["input_ids"]), LOW)
        if i in targets:
            s[targets[i][0]], e[targets[i][1]] = HIGH, HIGH
        starts.append(s)
        ends.append(e)
    return starts, ends


def covers(feature: dict, start: int, end: int) -> bool:
    spans = [o for o in feature["offsets"] if o is not None]
    return spans[0][0] <= start and end <= spans[-1][1]


# --- metric ----------------------------------------------------------------------------------------

def test_normalize_answer_follows_the_official_order():
    assert normalize_answer("  The Denver,  Broncos! ") == "denver broncos"
    assert normalize_answer("an apple a day") == "apple day"
    assert normalize_answer("theatre: Anthem") == "theatre anthem"  # articles only as whole words
    assert normalize_answer("A-the") == "athe"  # punctuation goes first, so "a"/"the" merge and survive


def test_exact_match_ignores_articles_case_and_punctuation():
    assert exact_match("the Denver Broncos", "Denver Broncos") == 1.0
    assert exact_match("DENVER broncos.", "Denver Broncos") == 1.0
    assert exact_match("Denver", "Denver Broncos") == 0.0
    assert exact_match("", "Denver Broncos") == 0.0


def test_f1_partial_overlap_by_hand():
    # pred tokens [denver, broncos, of, colorado], gold [broncos]: 1 common; P = 1/4, R = 1/1, F1 = 2PR/(P+R) = 0.4
    assert f1("Denver Broncos of Colorado", "Broncos") == pytest.approx(0.4)
    # pred [go, go, go], gold [go]: overlap counts min multiplicity = 1; P = 1/3, R = 1, F1 = (2/3)/(4/3) = 0.5
    assert f1("go go go", "go") == pytest.approx(0.5)
    # pred [denver, broncos, team], gold [denver, broncos, won]: 2 common; P = R = 2/3, F1 = 2/3
    assert f1("the Denver Broncos team", "Denver Broncos won") == pytest.approx(2 / 3)
    assert f1("The denver-Broncos!", "denverbroncos") == 1.0


def test_f1_is_zero_without_common_tokens_or_with_an_empty_prediction():
    assert f1("", "Denver Broncos") == 0.0
    assert f1("the", "Denver Broncos") == 0.0  # normalizes to nothing
    assert f1("Carolina Panthers", "Denver Broncos") == 0.0


def test_squad_scores_take_the_best_gold_and_average_questions():
    golds = {"q1": ["Denver Broncos", "Broncos"], "q2": ["Broncos", "Denver Broncos"], "q3": ["Santa Clara"]}
    examples = [{"id": q, "answers": {"text": t, "answer_start": [0] * len(t)}} for q, t in golds.items()]
    predictions = {"q1": "the Broncos", "q2": "Denver Broncos of Colorado"}  # q3 unanswered
    # q1: EM 1 (vs "Broncos"), F1 1.
    # q2: EM 0; F1 vs "Broncos" = 0.4 (above); vs "Denver Broncos": 2 common, P = 2/4, R = 2/2, F1 = 2/3 -> max 2/3.
    # q3: no prediction -> 0 and 0, still counted (as in the official script).
    scores = squad_scores(predictions, examples)
    assert scores["exact_match"] == pytest.approx(100 * 1 / 3)
    assert scores["f1"] == pytest.approx(100 * (1 + 2 / 3 + 0) / 3)


def test_squad_scores_reject_an_empty_split():
    with pytest.raises(LthError, match="no SQuAD questions"):
        squad_scores({}, [])


# --- post-processing -------------------------------------------------------------------------------

def test_postprocess_recovers_the_gold_span_exactly(tok):
    ex = example("The acting was superb. The plot was very dull, a boring film.", "plot was very dull",
                 question="the acting")
    features = eval_features([ex], tok)
    assert len(features) == 1
    start = ex["answers"]["answer_start"][0]
    target = (token_at(features[0], start), token_at(features[0], start + len("plot was very dull"), end=True))
    assert postprocess([ex], features, *logits_for(features, {0: target})) == {"q1": "plot was very dull"}


def test_postprocess_finds_the_answer_in_a_later_window(tok):
    ex = example(LONG, "superb story")
    features = eval_features([ex], tok, max_length=24, stride=8)
    start, end = LONG.index("superb story"), LONG.index("superb story") + len("superb story")
    holding = [i for i, f in enumerate(features) if covers(f, start, end)]
    assert len(features) >= 3 and not covers(features[0], start, end) and holding
    i = holding[-1]
    target = (token_at(features[i], start), token_at(features[i], end, end=True))
    assert postprocess([ex], features, *logits_for(features, {i: target})) == {"q1": "superb story"}


def test_postprocess_skips_too_long_and_reversed_spans(tok):
    ex = example("the movie was very good the plot was dull", "very good")
    features = eval_features([ex], tok)
    first = token_at(features[0], 0)  # "the", first context token
    five = (first, first + 4)  # "the movie was very good"
    assert postprocess([ex], features, *logits_for(features, {0: five}), n_best=1, max_answer_length=4) == {"q1": ""}
    assert postprocess([ex], features, *logits_for(features, {0: five}), n_best=1,
                       max_answer_length=5) == {"q1": "the movie was very good"}
    reversed_ = (first + 4, first + 2)
    assert postprocess([ex], features, *logits_for(features, {0: reversed_}), n_best=1) == {"q1": ""}
    on_question = (1, 2)  # the question's tokens are not context
    assert postprocess([ex], features, *logits_for(features, {0: on_question}), n_best=1) == {"q1": ""}
    # with more candidates a valid runner-up is chosen instead, never the reversed span
    assert postprocess([ex], features, *logits_for(features, {0: reversed_}))["q1"] != ""


# --- features --------------------------------------------------------------------------------------

def test_train_features_point_at_the_answer_or_at_cls(tok):
    ex = example(LONG, "superb story")
    train = train_features([ex], tok, max_length=24, stride=8)
    evals = eval_features([ex], tok, max_length=24, stride=8)
    assert len(train) == len(evals) >= 3
    start, end = LONG.index("superb story"), LONG.index("superb story") + len("superb story")
    seen = {True: 0, False: 0}
    for feature, window in zip(train, evals):
        assert set(feature) == {"input_ids", "token_type_ids", "start_positions", "end_positions"}
        assert type(feature["input_ids"]) is list and type(feature["start_positions"]) is int
        assert len(feature["input_ids"]) <= 24 and feature["input_ids"] == window["input_ids"]
        s, e = feature["start_positions"], feature["end_positions"]
        seen[covers(window, start, end)] += 1
        if covers(window, start, end):
            assert tok.decode(feature["input_ids"][s:e + 1]) == "superb story"
        else:
            assert (s, e) == (0, 0)
    assert seen[True] >= 1 and seen[False] >= 1


def test_eval_features_keep_example_index_and_context_offsets_only(tok):
    examples = [example("the film was fine", "fine", qid="a"), example(LONG, "superb story", qid="b")]
    features = eval_features(examples, tok, max_length=24, stride=8)
    assert features[0]["example_index"] == 0 and {f["example_index"] for f in features[1:]} == {1}
    for feature in features:
        assert len(feature["offsets"]) == len(feature["input_ids"])
        for token, offset, segment in zip(feature["input_ids"], feature["offsets"], feature["token_type_ids"]):
            if offset is None:
                assert segment == 0 or token == tok.sep_token_id
            else:
                assert segment == 1 and token != tok.sep_token_id and isinstance(offset, list)


def test_features_reject_a_window_too_small_for_the_question(tok):
    ex = example("the film was fine", "fine", question="the plot was very good " * 5)
    with pytest.raises(LthError, match="max_length 16"):
        train_features([ex], tok, max_length=16, stride=4)


# --- the real dev file -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def dev(shared_data):
    path = shared_data / "squad" / "dev-v1.1.json"
    examples, skipped = load_squad(str(path))
    return path, examples, skipped


def test_real_dev_file_has_10570_questions_in_48_articles(dev):
    _, examples, skipped = dev
    assert (len(examples), len({e["title"] for e in examples}), skipped) == (10570, 48, 0)
    first = examples[0]
    assert first["title"] == "Super_Bowl_50" and first["id"] == "56be4db0acb8001400a502ec"
    assert first["answers"]["text"][0] == "Denver Broncos"
    assert len({e["id"] for e in examples}) == 10570


def test_real_split_by_article_is_disjoint_and_complete(dev):
    path, examples, _ = dev
    train, evals, description = split_articles(examples, "40:8", source=str(path))
    train_titles, eval_titles = {e["title"] for e in train}, {e["title"] for e in evals}
    assert (len(train_titles), len(eval_titles), train_titles & eval_titles) == (40, 8, set())
    assert len(train) + len(evals) == 10570
    assert description == (f"SQuAD split by article: train = articles 1-40 ({len(train)} questions), "
                           f"eval = articles 41-48 ({len(evals)} questions) of dev-v1.1.json")
    assert split_articles(examples, "40:8")[:2] == (train, evals)  # deterministic


@pytest.mark.parametrize("spec, message", [("40", "not TRAIN:EVAL"), ("a:b", "not TRAIN:EVAL"),
                                           ("0:8", "at least 1"), ("50:8", "only 48 have answerable"),
                                           ("40:9", "only 48 have answerable")])
def test_real_split_rejects_bad_specs(dev, spec, message):
    with pytest.raises(LthError, match=message):
        split_articles(dev[1], spec)


def test_real_article_slice_through_features_and_postprocess(dev, tok):
    path, everything, _ = dev
    examples, _ = load_squad(str(path), articles=slice(40, 41))
    assert [e["id"] for e in examples] == [e["id"] for e in everything if e["title"] == examples[0]["title"]]
    examples = examples[:100]
    # every word is [UNK] to the tiny vocabulary, but offsets still map tokens to the real context characters
    train = train_features(examples, tok, max_length=128, stride=32)
    evals = eval_features(examples, tok, max_length=128, stride=32)
    targets = {i: (f["start_positions"], f["end_positions"]) for i, f in enumerate(train) if f["start_positions"]}
    assert len(evals) > len(examples) and len({evals[i]["example_index"] for i in targets}) == len(examples)
    predictions = postprocess(examples, evals, *logits_for(evals, targets))
    assert squad_scores(predictions, examples) == {"f1": 100.0, "exact_match": 100.0}


# --- bad input -------------------------------------------------------------------------------------

def write(tmp_path, content, name="squad.json") -> str:
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return str(path)


def test_missing_and_non_json_files(tmp_path):
    with pytest.raises(LthError, match="not found"):
        load_squad(str(tmp_path / "nope.json"))
    with pytest.raises(LthError, match="not valid JSON"):
        load_squad(write(tmp_path, "{not json"))


def test_file_without_data_or_paragraphs(tmp_path):
    for content in ({"version": "1.1"}, [{"paragraphs": []}], {"data": {"title": "x"}}):
        with pytest.raises(LthError, match="not a SQuAD v1.1 file: no 'data'"):
            load_squad(write(tmp_path, content))
    with pytest.raises(LthError, match="article 2 has no 'paragraphs'"):
        load_squad(write(tmp_path, {"data": [{"title": "a", "paragraphs": []}, {"title": "b"}]}))
    with pytest.raises(LthError, match="article 5 has no 'paragraphs'"):
        load_squad(write(tmp_path, {"data": [{"paragraphs": []}] * 4 + [{}]}), articles=slice(2, 5))
    with pytest.raises(LthError, match="article 'a' is malformed"):
        load_squad(write(tmp_path, {"data": [{"title": "a", "paragraphs": [{"context": "x"}]}]}))


def test_misplaced_answers_are_dropped_and_counted(tmp_path):
    context = "the film was fine"
    qas = [{"id": "ok", "question": "q", "answers": [{"text": "fine", "answer_start": 13},
                                                    {"text": "fine", "answer_start": 2}]},
           {"id": "gone", "question": "q", "answers": [{"text": "film", "answer_start": 0}]}]
    examples, skipped = load_squad(write(tmp_path, {"data": [{"title": "a", "paragraphs": [
        {"context": context, "qas": qas}]}]}))
    assert skipped == 2 and [e["id"] for e in examples] == ["ok"]
    assert examples[0]["answers"] == {"text": ["fine"], "answer_start": [13]}
