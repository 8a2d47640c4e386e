"""Hardening, part two: an export is verified as a whole, export only reads its run and refuses to overwrite what it
did not write, every flag of every command goes through the one table of ranges, masks are read strictly, and
predict never overwrites its input. Bad input is one line (exit 2), never a traceback."""
import hashlib
import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModelForSequenceClassification

import lth
from lth.artifacts.compact import load_compact
from lth.cli import main
from lth.core import masks
from lth.core.tensors import save_tensors
from tiny import make_tiny, searched, toy_task

RECIPE = dict(epochs=4, batch_size=8, lr=3e-3, schedule="remaining", rate=0.5, max_sparsity=0.8, precision="fp32",
              threads=1)


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    made = searched(tmp_path_factory.mktemp("exports"), **RECIPE)
    lth.export(made["run"], made["root"] / "level2", level=2, onnx=True)
    lth.export(made["run"], made["root"] / "level1", level=1)
    return made


def one_line_error(argv: list[str], capsys) -> str:
    assert main(argv) == 2, argv
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err and "internal error" not in err, err
    return err


def tree(folder: Path) -> dict[str, str]:
    """Every file under `folder` with the hash of its bytes."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# -- 1. an export is verified as a whole ------------------------------------------------------------------------

def exported_files(made) -> list[str]:
    return list(json.loads((made["root"] / "level2" / "ticket.json").read_text())["files"]["sha256"])


def damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "delete":
        path.unlink()
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "truncate":
        path.write_bytes(data[: len(data) // 2])
    else:  # one bit, keeping the size
        path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))


def test_the_export_records_the_checksum_of_every_file_it_wrote(made):
    info = json.loads((made["root"] / "level2" / "ticket.json").read_text())
    listed = info["files"]["sha256"]
    assert set(listed) == set(info["files"]["bytes"]) and "ticket.json" not in listed
    on_disk = tree(made["root"] / "level2")
    assert {name: on_disk[name] for name in listed} == listed
    assert {"ticket.safetensors", "model/model.safetensors", "model/config.json", "compact/compact.safetensors",
            "compact/config.json", "model.onnx"} <= set(listed)
    assert set(on_disk) - set(listed) == {"ticket.json"}, "every file but ticket.json itself is listed"


@pytest.mark.slow
@pytest.mark.parametrize("how", ["truncate", "flip", "delete", "empty"])
def test_every_damaged_file_of_an_export_is_named_by_inspect_and_every_loader(made, tmp_path, capsys, how):
    """Each file an export writes, damaged four ways: inspect names it; so does each loader that reads it (load_fast
    and predict read model/ and the ticket, load_compact compact/, apply_ticket the ticket)."""
    tried = 0
    for name in exported_files(made):
        copy = tmp_path / f"{how}-{name.replace('/', '-')}"
        shutil.copytree(made["root"] / "level2", copy)
        damage(copy / name, how)
        assert name in one_line_error(["inspect", str(copy)], capsys)
        tried += 1
        if name.startswith("model/") or name == "ticket.safetensors":
            with pytest.raises(lth.LthError, match=name.split("/")[-1]):
                lth.load_fast(copy)
            err = one_line_error(["predict", str(copy), "--input", made["dev"], "--output", str(tmp_path / "o.tsv")],
                                 capsys)
            assert name.split("/")[-1] in err
            tried += 2
        if name.startswith("compact/"):
            with pytest.raises(lth.LthError, match=name.split("/")[-1]):
                load_compact(copy)
            tried += 1
        if name == "ticket.safetensors":
            model = AutoModelForSequenceClassification.from_pretrained(made["model"], num_labels=2)
            with pytest.raises(lth.LthError, match="ticket.safetensors"):
                lth.apply_ticket(model, copy)
            tried += 1
        shutil.rmtree(copy)
    print(f"{how}: {tried} damaged reads tried")
    assert tried >= 20


def test_a_file_swapped_in_from_another_export_is_refused(made, tmp_path, capsys):
    for name in ("ticket.json", "ticket.safetensors", "model/model.safetensors", "compact/compact.safetensors"):
        copy = tmp_path / name.replace("/", "-")
        shutil.copytree(made["root"] / "level2", copy)
        shutil.copy(made["root"] / "level1" / name, copy / name)
        err = one_line_error(["inspect", str(copy)], capsys)
        assert "does not match ticket.json" in err or "bytes, ticket.json records" in err, err
        with pytest.raises(lth.LthError, match="ticket.json"):
            load_compact(copy) if name.startswith("compact/") else lth.load_fast(copy)


def test_inspect_shows_the_files_own_sizes(made, capsys):
    assert main(["inspect", str(made["root"] / "level2")]) == 0
    out = capsys.readouterr().out
    for name in exported_files(made):
        assert f"{(made['root'] / 'level2' / name).stat().st_size:,} bytes" in out


def test_a_damaged_config_outside_an_export_is_one_line(made, tmp_path):
    shutil.copytree(made["root"] / "level2" / "model", tmp_path / "model")
    shutil.copytree(made["root"] / "level2" / "compact", tmp_path / "compact")
    for folder, load in (("model", lth.load_fast), ("compact", load_compact)):
        (tmp_path / folder / "config.json").write_text('{"architectures": ["BertForSequenceClassification"], "hid')
        with pytest.raises(lth.LthError, match="config.json cannot be read as a model's configuration"):
            load(tmp_path / folder)


# -- 2. export reads its run, and writes only where it may ----------------------------------------------------

def test_export_writes_nothing_into_the_run_but_the_kept_weights(made, tmp_path):
    before = tree(made["run"])
    lth.export(made["run"], tmp_path / "again", level=2)  # level 2 kept its weights: nothing at all is written
    assert tree(made["run"]) == before
    (made["run"] / "level_01" / "final.safetensors").unlink()
    before = tree(made["run"])
    lth.export(made["run"], tmp_path / "retrained", level=1)
    after = tree(made["run"])
    assert set(after) - set(before) == {"level_01/final.safetensors"} and all(after[k] == v for k, v in before.items())
    assert not list(tmp_path.rglob(".lth-export.checkpoint.pt")), "the retraining's checkpoint is removed"


def test_a_read_only_run_is_exported_without_keeping_weights(made, tmp_path, monkeypatch, capsys):
    import lth.search.export as export

    def refuse(model, path, metadata=None):
        raise lth.LthError(f"cannot write {path}: Read-only file system; make the folder writable")

    (made["run"] / "level_01" / "final.safetensors").unlink(missing_ok=True)
    monkeypatch.setattr(export, "save_model", refuse)
    result = lth.export(made["run"], tmp_path / "ro", level=1)
    assert "the trained weights are not kept in the run" in capsys.readouterr().out
    assert result["metrics"]["retrained"] == result["metrics"]["run"]
    assert not (made["run"] / "level_01" / "final.safetensors").exists()


def test_a_copied_and_renamed_run_exports_the_same_ticket(made, tmp_path):
    copy = tmp_path / "somewhere" / "my-run"
    shutil.copytree(made["run"], copy)
    result = lth.export(copy, tmp_path / "from-copy", level=2)
    assert not [p for p in copy.parent.iterdir() if p != copy], "no new run folder beside it"
    mine = tree(tmp_path / "from-copy")
    theirs = tree(made["root"] / "level2")
    assert mine["ticket.safetensors"] == theirs["ticket.safetensors"]
    assert mine["model/model.safetensors"] == theirs["model/model.safetensors"]
    assert result["run"] == made["run"].name, "the ticket names the run it was found in, not the copy's folder"


def test_a_second_export_into_a_complete_folder_changes_no_byte(made, capsys):
    to = made["root"] / "level2"
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in to.rglob("*") if p.is_file()}
    assert main(["export", str(made["run"]), "--level", "2", "--to", str(to), "--onnx"]) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in to.rglob("*") if p.is_file()} == before


def test_force_writes_a_complete_export_again(made, tmp_path, capsys):
    to = tmp_path / "again"
    shutil.copytree(made["root"] / "level2", to)
    info = json.loads((to / "ticket.json").read_text())
    info.pop("int8_engine", None)  # as an older lth wrote it
    info["fast_engine"] = {"precision": "bf16", "stale": True}
    (to / "ticket.json").write_text(json.dumps(info))
    assert main(["export", str(made["run"]), "--level", "2", "--to", str(to), "--onnx", "--force"]) == 0
    assert "nothing to do" not in capsys.readouterr().out
    assert "stale" not in json.loads((to / "ticket.json").read_text())["fast_engine"], "measured again"
    assert main(["inspect", str(to)]) == 0


def test_another_export_or_foreign_files_in_to_are_refused_unless_forced(made, tmp_path, capsys):
    other = tmp_path / "other"
    shutil.copytree(made["root"] / "level1", other)
    err = one_line_error(["export", str(made["run"]), "--level", "2", "--to", str(other)], capsys)
    assert "holds another export (level 1" in err and "--force" in err
    assert tree(other) == tree(made["root"] / "level1"), "nothing was touched"
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert "holds no lth export" in one_line_error(["export", str(made["run"]), "--level", "2", "--to",
                                                    str(foreign)], capsys)
    assert main(["export", str(made["run"]), "--level", "2", "--to", str(other), "--force"]) == 0
    assert json.loads((other / "ticket.json").read_text())["level"] == 2
    assert not (other / "model.onnx").exists() or "model.onnx" in json.loads((other / "ticket.json").read_text())[
        "files"]["sha256"]


def test_a_killed_export_is_incomplete_for_inspect_and_the_rerun_finishes_it(made, tmp_path, capsys):
    to = tmp_path / "killed"
    shutil.copytree(made["root"] / "level1", to)
    (to / "ticket.json").unlink()  # what a kill leaves: ticket.json is written last
    assert "incomplete export" in one_line_error(["inspect", str(to)], capsys)
    assert main(["export", str(made["run"]), "--level", "1", "--to", str(to)]) == 0
    assert main(["inspect", str(to)]) == 0


# -- 3. every flag of every command goes through the one table ------------------------------------------------

def test_every_numeric_flag_of_every_command_is_checked(made, tmp_path, capsys):
    run, to, dev = str(made["run"]), str(made["root"] / "level2"), made["dev"]
    out = str(tmp_path / "o.tsv")
    cases = [
        (["export", run, "--sparsity", "1.5", "--to", str(tmp_path / "e")], "--sparsity 1.5"),
        (["export", run, "--sparsity", "nan", "--to", str(tmp_path / "e")], "--sparsity nan"),
        (["export", run, "--sparsity", "-0.1", "--to", str(tmp_path / "e")], "--sparsity -0.1"),
        (["export", run, "--level", "-1", "--to", str(tmp_path / "e")], "--level -1"),
        (["export", run, "--level", "2", "--threads", "0", "--to", str(tmp_path / "e")], "--threads 0"),
        (["predict", to, "--input", dev, "--output", out, "--batch-size", "0"], "--batch-size 0"),
        (["predict", to, "--input", dev, "--output", out, "--batch-size", "-3"], "--batch-size -3"),
        (["speed", to, "--repeats", "0"], "--repeats 0"),
        (["speed", to, "--length", "0"], "--length 0"),
        (["speed", to, "--length", "100000"], "--length 100000 is beyond"),
        (["speed", to, "--batch-size", "0"], "--batch-size 0"),
        (["speed", to, "--threads", "-1"], "--threads -1"),
        (["transfer", run, "--level", "1", "--task", made["train"], "--eval", dev, "--seeds", "0"], "--seeds 0"),
        (["transfer", run, "--level", "1", "--task", made["train"], "--eval", dev, "--lr", "-1"], "--lr -1"),
        (["prunable", "--model", made["model"], "--include", "("], "is not a valid regex"),
    ]
    for argv, message in cases:
        assert message in one_line_error(argv, capsys), argv
    assert not (tmp_path / "e").exists(), "nothing was written"


def test_a_bad_transfer_target_is_refused_before_anything_trains(made, tmp_path, monkeypatch, capsys):
    import lth.search.search as search

    monkeypatch.setattr(search, "finetune", lambda *a, **k: pytest.fail("a unit trained before the typo was seen"))
    err = one_line_error(["transfer", str(made["run"]), "--level", "1", "--task", f"{made['train']},bogus",
                          "--eval", made["dev"], "--runs-dir", str(tmp_path)], capsys)
    assert "unknown task 'bogus'" in err


def test_fp16_is_refused_on_a_cpu_whatever_device_flag(capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: fp16 is allowed there")
    for device in ("auto", "cpu"):
        with pytest.raises(lth.LthError, match="fp16 is for GPUs"):
            lth.FindSettings(task="mrpc", precision="fp16", device=device)


def test_a_squad_question_without_text_is_one_line(tmp_path):
    from lth.tasks.squad import load_squad

    data = {"data": [{"title": "t", "paragraphs": [{"context": "some text here", "qas": [
        {"id": "q1", "question": None, "answers": [{"text": "text", "answer_start": 5}]}]}]}]}
    (tmp_path / "squad.json").write_text(json.dumps(data))
    with pytest.raises(lth.LthError, match="question 'q1' has no text"):
        load_squad(str(tmp_path / "squad.json"))


# -- 4. masks are read strictly ---------------------------------------------------------------------------------

def test_a_mask_of_fractions_is_refused_and_exact_zeros_and_ones_are_read(made, tmp_path, capsys):
    mask = masks.load(made["run"] / "level_02" / "mask.safetensors")
    fractions = {k: torch.rand(v.shape) for k, v in mask.items()}
    save_tensors(fractions, tmp_path / "fractions.safetensors")
    with pytest.raises(lth.LthError, match="holds values other than 0 and 1"):
        masks.load(tmp_path / "fractions.safetensors")
    err = one_line_error(["transfer", str(tmp_path / "fractions.safetensors"), "--task", made["train"], "--eval",
                          made["dev"], "--runs-dir", str(tmp_path / "runs")], capsys)
    assert "not a mask" in err
    save_tensors({k: v.float() for k, v in mask.items()}, tmp_path / "floats.safetensors")
    assert all(torch.equal(masks.load(tmp_path / "floats.safetensors")[k], mask[k]) for k in mask)
    save_tensors({}, tmp_path / "empty.safetensors")
    assert "holds no tensors" in one_line_error(["transfer", str(tmp_path / "empty.safetensors"), "--task",
                                                 made["train"], "--eval", made["dev"]], capsys)


def test_an_exported_ticket_is_a_transfer_source(made):
    from lth.search.sources import resolve_sources

    (ticket,) = resolve_sources(str(made["root"] / "level2" / "ticket.safetensors"), None, None)
    (level,) = resolve_sources(str(made["run"]), [2], None)
    assert ticket.mask.keys() == level.mask.keys() and all(torch.equal(ticket.mask[k], level.mask[k]) for k in
                                                          ticket.mask)
    assert ticket.base == level.base, "the ticket's fingerprints of its base are checked like a run's"


# -- 5. predict never overwrites its input ------------------------------------------------------------------------

def test_predict_refuses_to_write_over_its_input(made, tmp_path, capsys):
    data = tmp_path / "in.csv"
    shutil.copy(made["dev"], data)
    before = data.read_bytes()
    (tmp_path / "link.csv").symlink_to(data)
    os.link(data, tmp_path / "hard.csv")
    for output in (data, tmp_path / "link.csv", tmp_path / "hard.csv"):
        err = one_line_error(["predict", str(made["root"] / "level2"), "--input", str(data), "--output", str(output)],
                             capsys)
        assert "is the --input file itself" in err
    assert data.read_bytes() == before


def test_a_tsv_cell_over_128_kib_is_read(made, tmp_path, capsys):
    data = tmp_path / "long.tsv"
    data.write_text("text\n" + "good " * 40_000 + "\nbad film\n")
    assert main(["predict", str(made["root"] / "level2"), "--input", str(data), "--output", str(tmp_path / "o.tsv")]) == 0
    assert len((tmp_path / "o.tsv").read_text().splitlines()) == 3


# -- 7. smaller --------------------------------------------------------------------------------------------------

def test_report_says_when_it_replaces_an_earlier_page(made, tmp_path, capsys):
    assert main(["report", str(made["run"]), "--to", str(tmp_path / "page")]) == 0
    capsys.readouterr()
    assert main(["report", str(made["run"]), "--to", str(tmp_path / "page")]) == 0
    assert "held an earlier report; it is replaced" in capsys.readouterr().out


def out_of_range(rule: tuple, kind) -> list[str]:
    """Values argparse accepts for a flag of this type that the rule refuses."""
    candidates = ["0", "-1", "-3", "1", "1.5", "4"] if kind is float else ["0", "-1", "-3", "4"]
    refused = [v for v in candidates if not rule[1](float(v))]
    return refused + (["nan", "inf"] if kind is float else [])


def test_an_out_of_range_value_in_every_numeric_flag_of_every_command(made, tmp_path, capsys):
    """Read from the parser itself: every int or float flag of every command has a range in the one table, and
    every value outside it is one line before anything runs (a flag added later without a range fails here)."""
    import argparse

    from lth.cli import build_parser
    from lth.run.settings import COMMAND_RANGES

    run, to, dev, train = str(made["run"]), str(made["root"] / "level2"), made["dev"], made["train"]
    base = {"find": ["--task", train, "--eval", dev, "--runs-dir", str(tmp_path / "runs")],
            "transfer": [run, "--task", train, "--eval", dev, "--runs-dir", str(tmp_path / "runs")],
            "export": [run, "--to", str(tmp_path / "e")], "speed": [to],
            "predict": [to, "--input", dev, "--output", str(tmp_path / "o.tsv")]}
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    tried = 0
    for command, parser in commands.items():
        for action in parser._actions:
            if action.type not in (int, float):
                continue
            assert action.dest in COMMAND_RANGES, f"lth {command} {action.option_strings[0]} has no range"
            for value in out_of_range(COMMAND_RANGES[action.dest], action.type):
                err = one_line_error([command, *base[command], action.option_strings[0], value], capsys)
                assert action.option_strings[0] in err, err
                tried += 1
    print(f"{tried} out-of-range values tried")
    assert tried > 60 and not (tmp_path / "runs").exists() and not (tmp_path / "e").exists()


# -- issue 23: keep the weights, predict at the trained length ------------------------------------------------

def test_kept_weights_make_export_train_nothing_and_give_the_same_files(made, tmp_path, monkeypatch):
    import lth.search.search as search

    args = dict(model=made["model"], task=made["train"], eval=made["dev"], runs_dir=str(made["root"] / "runs"))
    summary = lth.find(**args, **RECIPE, keep_weights="1,2")  # the same run: --keep-weights changes no result
    assert summary["run"] == str(made["run"])
    (made["run"] / "level_01" / "final.safetensors").unlink(missing_ok=True)
    retrained = lth.export(made["run"], tmp_path / "a" / "ticket", level=1)  # trains level 1 again, and keeps it
    monkeypatch.setattr(search, "finetune", lambda *a, **k: pytest.fail("export trained although weights were kept"))
    kept = lth.export(made["run"], tmp_path / "b" / "ticket", level=1)
    assert kept["metrics"]["retrained"] == retrained["metrics"]["retrained"]
    assert tree(tmp_path / "b" / "ticket") == tree(tmp_path / "a" / "ticket"), "bit-identical files"


def test_a_new_search_keeps_the_levels_asked_for(made, tmp_path):
    run = Path(lth.find(model=made["model"], task=made["train"], eval=made["dev"], runs_dir=str(tmp_path),
                        keep_weights="2", **{**RECIPE, "epochs": 1})["run"])
    assert [p.parent.name for p in sorted(run.glob("level_*/final.safetensors"))] == ["level_02"]
    with pytest.raises(lth.LthError, match="--keep-weights 'x'"):
        lth.FindSettings(task="mrpc", keep_weights="x", precision="fp32")


def test_predict_truncates_at_the_recorded_length(made, tmp_path, capsys):
    """A row longer than 128 tokens (the length the ticket was trained with): scored as its first 128 tokens, and
    as more with --max-length 512."""
    from transformers import AutoTokenizer

    data = tmp_path / "long.csv"
    text = " ".join(["good film"] * 40 + ["bad"] * 200)
    data.write_text(f"text\n{text}\n")
    to = made["root"] / "level2"
    scores = {}
    for extra in ([], ["--max-length", "512"]):
        assert main(["predict", str(to), "--input", str(data), "--output", str(tmp_path / "o.tsv"),
                     "--precision", "fp32", *extra]) == 0
        scores[tuple(extra)] = [float(v) for v in (tmp_path / "o.tsv").read_text().splitlines()[1].split("\t")[2:]]
    assert "truncated at 128 tokens (the length the ticket was trained" in capsys.readouterr().out
    tokenizer = AutoTokenizer.from_pretrained(to / "model")
    model = AutoModelForSequenceClassification.from_pretrained(to / "model").eval()
    with torch.no_grad():
        by_hand = model(**tokenizer([text], truncation=True, max_length=128, return_tensors="pt")).logits[0].tolist()
    assert scores[()] == pytest.approx(by_hand, abs=2e-6) and scores[()] != pytest.approx(scores[("--max-length", "512")])


def test_the_model_card_parses_and_claims_what_ticket_json_holds(made, tmp_path):
    from huggingface_hub import ModelCard

    info = json.loads((made["root"] / "level2" / "ticket.json").read_text())
    card = ModelCard.load(made["root"] / "level2" / "model" / "README.md")
    assert card.data.base_model == made["model"] and "lottery-ticket" in card.data.tags
    claimed = {(r.metric_name, r.metric_value) for r in card.data.eval_results}
    recorded = {(f"{name} ({form})", value) for form, values in info["metrics"].items()
                for name, value in values.items() if value is not None}
    assert claimed == recorded
    assert "not judged against the full model" in card.text and "lth export runs/" in card.text
    assert "model/README.md" in info["files"]["sha256"], "the card is verified like every other file"


@pytest.mark.slow
def test_the_card_says_plainly_whether_the_level_wins(made, tmp_path):
    from huggingface_hub import ModelCard

    from lth.report.tables import verdict_table

    summary = lth.find(model=made["model"], task=made["train"], eval=made["dev"], runs_dir=str(tmp_path / "runs"),
                       seeds=2, baselines="random-prune", levels="1", **{**RECIPE, "max_sparsity": 0.5})
    lth.export(summary["run"], tmp_path / "judged", level=1)
    text = ModelCard.load(tmp_path / "judged" / "model" / "README.md").text
    wins = summary["verdict"]["winning"]["accuracy"]["1sigma"] is not None
    assert ("**a winning ticket**" in text) == wins and ("**not a winning ticket**" in text) == (not wins)
    assert "random-prune:" in text and "full model (accuracy):" in text
    assert verdict_table(summary["results"], summary["metrics"], "accuracy")


# -- issue 23: the Hub (its HTTP layer replaced: no network here) ----------------------------------------------

def test_push_sends_exactly_the_verified_files_and_the_card(made, tmp_path, monkeypatch, capsys):
    from huggingface_hub import HfApi

    sent = {}
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo, **kw: sent.update(repo=repo, private=kw["private"]))
    monkeypatch.setattr(HfApi, "create_commit", lambda self, repo, operations, **kw: sent.update(
        operations={op.path_in_repo: Path(op.path_or_fileobj) for op in operations}, message=kw["commit_message"])
        or SimpleNamespace(commit_url=f"https://huggingface.co/{repo}/commit/abc"))
    to = made["root"] / "level2"
    assert main(["push", str(to), "--repo", "me/tiny-ticket", "--private"]) == 0
    assert "https://huggingface.co/me/tiny-ticket/commit/abc" in capsys.readouterr().out
    listed = json.loads((to / "ticket.json").read_text())["files"]["sha256"]
    assert set(sent["operations"]) == {*listed, "ticket.json", "README.md"} and sent["private"] is True
    assert all(path == to / name for name, path in sent["operations"].items() if name != "README.md")
    assert sent["operations"]["README.md"] == to / "model" / "README.md"
    assert sent["message"] == f"lth ticket: level 2 of {made['run'].name}"
    damaged = tmp_path / "damaged"
    shutil.copytree(to, damaged)
    damage(damaged / "compact" / "compact.safetensors", "flip")
    sent.clear()
    assert "compact.safetensors is damaged" in one_line_error(["push", str(damaged), "--repo", "me/x"], capsys)
    assert sent == {}, "nothing is sent when the export does not verify"
    assert "owner/name" in one_line_error(["push", str(to), "--repo", "not a repo"], capsys)


def test_push_without_a_token_or_a_network_is_one_line(made, monkeypatch, capsys):
    from huggingface_hub import HfApi

    for reason, advice in (("401 Client Error: Unauthorized", "hf auth login"), ("Connection refused", "network")):
        def refuse(self, repo, _reason=reason, **kw):
            raise OSError(_reason)
        monkeypatch.setattr(HfApi, "create_repo", refuse)
        assert advice in one_line_error(["push", str(made["root"] / "level2"), "--repo", "me/x"], capsys)


def test_apply_ticket_reads_a_hub_id(made, monkeypatch):
    import lth.artifacts.hub as hub

    asked = []
    monkeypatch.setattr(hub, "hf_hub_download", lambda repo, name: asked.append((repo, name)) or str(
        made["root"] / "level2" / "ticket.safetensors"))
    model = AutoModelForSequenceClassification.from_pretrained(made["model"], num_labels=2)
    mask = lth.apply_ticket(model, "me/tiny-ticket")
    assert asked == [("me/tiny-ticket", "ticket.safetensors")] and masks.sparsity(mask) == pytest.approx(0.75, abs=1e-3)
    monkeypatch.setattr(hub, "hf_hub_download", lambda repo, name: (_ for _ in ()).throw(OSError("offline")))
    with pytest.raises(lth.LthError, match="could not read ticket.safetensors from the Hub repository me/x"):
        lth.apply_ticket(model, "me/x")


@pytest.mark.slow
def test_a_sentence_transformers_base_exports_a_folder_sentence_transformers_loads(tmp_path):
    """The base's modules.json and pooling go into model/: SentenceTransformer loads the pruned encoder, and its
    embedding is the mean of the exported encoder's token states."""
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel, AutoTokenizer

    base = Path(make_tiny(tmp_path / "st-base"))
    (base / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    (base / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 64, "do_lower_case": False}))
    (base / "1_Pooling").mkdir()
    (base / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 32,
                                                                 "pooling_mode_mean_tokens": True}))
    train, dev = toy_task(tmp_path / "data")
    run = lth.find(model=str(base), task=train, eval=dev, runs_dir=str(tmp_path / "runs"), **RECIPE)["run"]
    lth.export(run, tmp_path / "ticket", level=2)
    folder = tmp_path / "ticket" / "model"
    assert (folder / "modules.json").is_file() and (folder / "1_Pooling" / "config.json").is_file()
    embedding = SentenceTransformer(str(folder), device="cpu").encode(["a good film"], convert_to_tensor=True)[0]
    encoder = AutoModel.from_pretrained(folder).eval()
    batch = AutoTokenizer.from_pretrained(folder)(["a good film"], return_tensors="pt")
    with torch.no_grad():
        states = encoder(**batch).last_hidden_state[0]
    assert torch.allclose(embedding, states.mean(0), atol=1e-5)
    assert main(["inspect", str(tmp_path / "ticket")]) == 0, "the kept modules are verified like every file"


@pytest.mark.slow
def test_export_with_speed_puts_the_timing_in_ticket_json_and_the_card(made, tmp_path):
    from huggingface_hub import ModelCard

    result = lth.export(made["run"], tmp_path / "timed", level=2, speed=True)
    shapes = result["speed"]["shapes"]
    assert set(shapes) == {"32x128", "1x128"}
    assert all("torch fp32" in engines and any(k.startswith("lth") for k in engines) for engines in shapes.values())
    assert all(v["seconds"] > 0 for engines in shapes.values() for v in engines.values())
    text = ModelCard.load(tmp_path / "timed" / "model" / "README.md").text
    assert "Speed measured at export" in text and "| 32x128 |" in text and "| 1x128 |" in text


def test_an_export_by_an_older_lth_is_checked_by_its_recorded_sizes(made, tmp_path, capsys):
    """Older exports recorded sizes only, and a second export listed ticket.json itself: both still inspect, and a
    truncated file is still found by its size."""
    old = tmp_path / "old"
    shutil.copytree(made["root"] / "level2", old)
    info = json.loads((old / "ticket.json").read_text())
    del info["files"]["sha256"]
    info["files"]["bytes"]["ticket.json"] = 12345  # the size ticket.json had before it was written again
    (old / "ticket.json").write_text(json.dumps(info))
    assert main(["inspect", str(old)]) == 0
    damage(old / "model" / "model.safetensors", "truncate")
    assert "model.safetensors is damaged (it has" in one_line_error(["inspect", str(old)], capsys)
