"""Ship a ticket: the bit-packed ticket, the Hugging Face folder, the compact model and ONNX, on a tiny BERT,
each checked against the masked model trained in the run."""
import json
import os
import struct
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification

import lth
from lth.artifacts.compact import load_compact
from lth.artifacts.ticket import entropy_bytes, load_ticket, pack, unpack
from lth.cli import main
from lth.core import masks
from lth.core.tensors import load_into
from tiny import make_tiny, searched

RECIPE = dict(epochs=6, batch_size=8, lr=3e-3, schedule="remaining", rate=0.5, max_sparsity=0.8, precision="fp32",
              threads=1)


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    made = searched(tmp_path_factory.mktemp("export"), **RECIPE)
    result = lth.export(made["run"], made["root"] / "ticket", level=2, onnx=True)
    return {**made, "to": made["root"] / "ticket", "result": result}


def inputs() -> dict:
    ids = torch.tensor([[2, 5, 14, 6, 17, 3, 0, 0], [2, 10, 15, 9, 11, 12, 18, 3], [2, 7, 3, 0, 0, 0, 0, 0]])
    return {"input_ids": ids, "attention_mask": (ids != 0).long(), "token_type_ids": torch.zeros_like(ids)}


def masked_trained_model(shipped):
    """The level's trained weights as the run keeps them, on the model lth trains."""
    model = AutoModelForSequenceClassification.from_pretrained(shipped["model"], num_labels=2, attn_implementation="eager")
    load_into(model, shipped["run"] / "level_02" / "final.safetensors")
    return model.eval()


@pytest.mark.parametrize("density", [0.0, 0.02, 0.1, 0.5, 0.97, 1.0])
def test_bits_round_trip_at_every_density(density):
    g = torch.Generator().manual_seed(0)
    mask = torch.rand(37, 53, generator=g) < density
    data, encoding = pack(mask)
    assert torch.equal(unpack(data, encoding, [37, 53]), mask)
    assert data.numel() <= (37 * 53 + 7) // 8, "never more than one bit a weight"


def test_entropy_bounds_by_hand():
    half = torch.tensor([1, 0, 1, 0, 1, 0, 1, 0], dtype=torch.bool)
    mask = {"a": half, "b": torch.ones(8, dtype=torch.bool)}
    # one density: 12 of 16 kept, H(0.75) = 0.811278 bits a weight; per matrix: H(0.5) = 1 bit x 8, H(1) = 0
    assert entropy_bytes(mask) == pytest.approx(16 * 0.8112781 / 8)
    assert entropy_bytes(mask, per_matrix=True) == pytest.approx(1.0)
    assert entropy_bytes({"b": mask["b"]}) == 0.0


@pytest.mark.slow
def test_ticket_round_trip_is_bit_exact_and_carries_what_it_is(shipped):
    mask, meta = load_ticket(shipped["to"])
    run_mask = masks.load(shipped["run"] / "level_02" / "mask.safetensors")
    assert mask.keys() == run_mask.keys() and all(torch.equal(mask[k], run_mask[k]) for k in mask)
    assert meta["level"] == 2 and meta["task"] == "train" and meta["base_model"] == shipped["model"]
    assert meta["sparsity"] == pytest.approx(0.75, abs=1e-3) and meta["metrics"] == shipped["result"]["metrics"]["run"]
    assert set(meta["base_fingerprints"]) == set(mask) and meta["schedule"]["rate"] == 0.5
    path = shipped["to"] / "ticket.safetensors"
    (header,) = struct.unpack("<Q", path.read_bytes()[:8])
    packed = sum((m.numel() + 7) // 8 for m in mask.values())
    assert path.stat().st_size - 8 - header <= packed, "at most one bit a weight (the rest is the metadata)"


def test_apply_ticket_zeroes_exactly_and_refuses_another_base(shipped, tmp_path):
    model = AutoModelForSequenceClassification.from_pretrained(shipped["model"], num_labels=2)
    mask = lth.apply_ticket(model, shipped["to"] / "ticket.safetensors")
    params = dict(model.named_parameters())
    for name, keep in mask.items():
        assert torch.count_nonzero(params[name][~keep]) == 0 and torch.count_nonzero(params[name][keep]) == keep.sum()
    bare = __import__("transformers").AutoModel.from_pretrained(shipped["model"])  # no "bert." prefix
    assert len(lth.apply_ticket(bare, shipped["to"])) == len(mask)
    other = AutoModelForSequenceClassification.from_pretrained(make_tiny(tmp_path / "other", seed=5), num_labels=2)
    with pytest.raises(lth.LthError, match="this model's pre-trained values differ"):
        lth.apply_ticket(other, shipped["to"])
    assert len(lth.apply_ticket(other, shipped["to"], check_base=False)) == len(mask)
    wider = AutoModelForSequenceClassification.from_pretrained(make_tiny(tmp_path / "wide", hidden=48), num_labels=2)
    with pytest.raises(lth.LthError, match="does not fit this model"):
        lth.apply_ticket(wider, shipped["to"])


LOAD_WITHOUT_LTH = """
import json, sys
sys.modules["lth"] = None  # any import of lth now fails: the folder must stand alone
import torch
from transformers import AutoModelForSequenceClassification
model = AutoModelForSequenceClassification.from_pretrained(sys.argv[1]).eval()
batch = {k: torch.tensor(v) for k, v in json.loads(sys.argv[2]).items()}
with torch.no_grad():
    print(json.dumps({"logits": model(**batch).logits.tolist(), "labels": model.config.id2label}))
"""


@pytest.mark.slow
@pytest.mark.subprocess
def test_the_hf_folder_loads_without_lth_and_predicts_as_the_masked_model(shipped):
    batch = inputs()
    out = subprocess.run([sys.executable, "-c", LOAD_WITHOUT_LTH, str(shipped["to"] / "model"),
                          json.dumps({k: v.tolist() for k, v in batch.items()})],
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ""})
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    with torch.no_grad():
        want = masked_trained_model(shipped)(**batch).logits
    assert torch.allclose(torch.tensor(got["logits"]), want, rtol=0, atol=1e-6)  # another process, other threads
    assert got["labels"] == {"0": "0", "1": "1"}
    assert shipped["result"]["metrics"]["model"] == shipped["result"]["metrics"]["run"]


def test_compact_is_small_and_loads_back_bit_identical(shipped):
    files = shipped["result"]["files"]
    path = shipped["to"] / "compact" / "compact.safetensors"
    (header,) = struct.unpack("<Q", path.read_bytes()[:8])
    data = path.stat().st_size - 8 - header
    floats = 4 * (files["kept_weights"] + (files["compact_bound_bytes"] - 4 * files["kept_weights"]
                                           - sum((m.numel() + 7) // 8 for m in load_ticket(shipped["to"])[0].values())) // 4)
    assert floats <= data <= files["compact_bound_bytes"], "kept values + other weights <= data <= that + mask bits"
    mask_bytes = sum(len(b) for b in _packed_masks(path))
    assert files["compact_prunable_bytes"] == 4 * files["kept_weights"] + mask_bytes
    assert files["compact_prunable_bytes"] <= 4 * files["kept_weights"] + sum(
        (m.numel() + 7) // 8 for m in load_ticket(shipped["to"])[0].values()), "a mask never beyond a bit a weight"
    compact = load_compact(shipped["to"] / "compact")
    reference = masked_trained_model(shipped).state_dict()
    state = compact.state_dict()
    assert state.keys() == reference.keys() and all(torch.equal(state[k], reference[k]) for k in state)


def _packed_masks(path):
    """The stored bytes of every bit mask in a compact file, read with safetensors itself."""
    from safetensors.numpy import load_file

    return [a.tobytes() for k, a in load_file(str(path)).items() if k.endswith("::mask")]


def test_every_exported_file_has_the_umask_permissions(shipped):
    """transformers writes its weights 0600 through a temporary file; a shared ticket must be readable."""
    umask = os.umask(0o022)
    os.umask(umask)
    modes = {str(p.relative_to(shipped["to"])): p.stat().st_mode & 0o777 for p in shipped["to"].rglob("*") if p.is_file()}
    assert "model/model.safetensors" in modes and set(modes.values()) == {0o666 & ~umask}, modes


def test_fp16_compact_is_half_and_its_metrics_are_measured(shipped, tmp_path):
    half = lth.export(shipped["run"], tmp_path / "half", level=2, fp16=True)
    full_size = shipped["result"]["files"]["bytes"]["compact/compact.safetensors"]
    half_size = half["files"]["bytes"]["compact/compact.safetensors"]
    assert 0.45 * full_size < half_size < 0.6 * full_size
    assert set(half["metrics"]["compact (fp16)"]) == {"accuracy", "f1"}
    model = load_compact(tmp_path / "half")
    weights = masked_trained_model(shipped).state_dict()
    assert all(torch.equal(v, weights[k].half().float()) for k, v in model.state_dict().items())


def test_the_fast_engine_is_scored_on_the_dev_set_at_export(shipped, capsys):
    from lth.artifacts.sizes import export_report
    from lth.core.devices import cpu_has_native_bf16
    from lth.search.export import TOLERANCE_POINTS, fast_engine

    engine = shipped["result"]["fast_engine"]
    precision = "bf16" if cpu_has_native_bf16() else "fp32"
    assert engine["precision"] == precision and engine["primary"] == "accuracy"
    assert shipped["result"]["metrics"][f"fast engine ({precision})"] == engine["metrics"]
    exported = shipped["result"]["metrics"]["model"]
    assert engine["moves_points"] == pytest.approx(100 * (engine["metrics"]["accuracy"] - exported["accuracy"]))
    assert engine["within_tolerance"] == (abs(engine["moves_points"]) <= TOLERANCE_POINTS + 1e-9)
    moved = {**shipped["result"], "fast_engine": {**engine, "precision": "bf16", "moves_points": -0.49,
                                                   "within_tolerance": False}}
    assert "moves accuracy by -0.49 points: more than 0.2, so lth.load_fast and lth predict/speed run this ticket " \
           "in fp32 unless told --precision bf16" in export_report(moved, shipped["to"], TOLERANCE_POINTS)
    search = SimpleNamespace(task=SimpleNamespace(forward=lambda *a: None))
    assert fast_engine(search, shipped["to"], exported) is None, "masked-LM: its forward reaches inside the model"
    broken = fast_engine(SimpleNamespace(task=SimpleNamespace(forward=None)), shipped["root"] / "nowhere", exported)
    assert broken["error"].startswith("LthError: no model at")
    assert "could not run this model: LthError" in export_report({**shipped["result"], "fast_engine": broken},
                                                                 shipped["to"], TOLERANCE_POINTS)


def test_auto_precision_runs_fp32_where_the_export_measured_bf16_moving_the_metric(shipped, tmp_path):
    import shutil

    from lth.core.devices import cpu_has_native_bf16

    copy = tmp_path / "ticket"
    shutil.copytree(shipped["to"], copy)
    native = "bf16" if cpu_has_native_bf16() else "fp32"
    info = json.loads((copy / "ticket.json").read_text())
    info.pop("int8_engine", None)  # int8 is the next test's
    (copy / "ticket.json").write_text(json.dumps(info))
    assert lth.load_fast(copy).precision == native
    info["fast_engine"] = {**info["fast_engine"], "precision": "bf16", "moves_points": -0.49,
                           "within_tolerance": False}
    (copy / "ticket.json").write_text(json.dumps(info))
    assert lth.load_fast(copy).precision == "fp32", "measured: bf16 moves the metric too far"
    assert lth.load_fast(copy, precision="bf16").precision == "bf16", "unless asked for"
    assert lth.load_fast(copy / "model").precision == "fp32", "its model/ folder too"


def test_int8_is_scored_at_export_and_auto_picks_it_only_within_half_a_point(shipped, tmp_path, monkeypatch, capsys):
    import shutil

    import lth.engine.engine
    from lth.artifacts.sizes import export_report
    from lth.core.devices import cpu_has_native_bf16
    from lth.engine.quads import quad_kernel
    from lth.search.export import INT8_TOLERANCE_POINTS, TOLERANCE_POINTS

    int8 = shipped["result"].get("int8_engine")
    assert (int8 is not None) == quad_kernel(), "measured wherever the kernel is built"
    native = "bf16" if cpu_has_native_bf16() else "fp32"
    copy = tmp_path / "ticket"
    shutil.copytree(shipped["to"], copy)
    info = json.loads((copy / "ticket.json").read_text())
    if int8 is not None:
        exported = shipped["result"]["metrics"]["model"]
        assert int8["precision"] == "int8" and shipped["result"]["metrics"]["fast engine (int8)"] == int8["metrics"]
        assert int8["moves_points"] == pytest.approx(100 * (int8["metrics"]["accuracy"] - exported["accuracy"]))
        assert int8["tolerance_points"] == INT8_TOLERANCE_POINTS == 0.5
        assert int8["within_tolerance"] == (abs(int8["moves_points"]) <= 0.5 + 1e-9)
    monkeypatch.setattr(lth.engine.engine, "cpu_flags", lambda: frozenset({"avx512_vnni"}))  # a CPU without AMX
    for within, expected in ((True, "int8" if quad_kernel() else native), (False, native)):
        info["int8_engine"] = {"precision": "int8", "primary": "accuracy", "moves_points": 0.4 if within else -0.6,
                               "tolerance_points": 0.5, "within_tolerance": within}
        (copy / "ticket.json").write_text(json.dumps(info))
        fast = lth.load_fast(copy)
        assert fast.precision == expected
        if quad_kernel():
            assert fast.why.startswith("lth export measured int8 moving accuracy by +0.40") if within else \
                "int8 moved accuracy by -0.60 points on the dev set, past 0.5" in fast.why
        line = export_report({**shipped["result"], "int8_engine": info["int8_engine"]}, copy, TOLERANCE_POINTS)
        assert ("so lth.load_fast and lth predict/speed run it in int8" in line) == within
    info["int8_engine"]["within_tolerance"] = True
    (copy / "ticket.json").write_text(json.dumps(info))
    monkeypatch.setattr(lth.engine.engine, "cpu_flags", lambda: frozenset({"avx512_vnni", "amx_bf16"}))
    assert lth.load_fast(copy).precision == native, "with AMX, dense bf16 is faster: auto stays bf16"
    if quad_kernel():
        assert "int8 left out: with AMX" in lth.load_fast(copy).why
        assert main(["inspect", str(copy)]) == 0
        assert "run it in " + native + ": " in capsys.readouterr().out
    monkeypatch.setattr(lth.engine.engine, "cpu_flags", lambda: frozenset({"avx512_vnni"}))
    monkeypatch.setattr(lth.engine.engine, "quad_kernel", lambda: False)
    assert lth.load_fast(copy).precision == native, "without VNNI, auto never picks int8"


def test_onnx_logits_match(shipped):
    import onnxruntime

    assert shipped["result"]["onnx"]["max_abs_diff"] < 1e-4
    session = onnxruntime.InferenceSession(str(shipped["to"] / "model.onnx"))
    batch = inputs()
    got = session.run(["logits"], {k: v.numpy() for k, v in batch.items()})[0]
    with torch.no_grad():
        want = masked_trained_model(shipped)(**batch).logits.numpy()
    assert np.abs(got - want).max() < 1e-5


def test_inspect_describes_every_artifact(shipped, capsys):
    to = shipped["to"]
    for path, expected in [(to, "a ticket exported by lth export"), (to / "ticket.safetensors", "ticket (a mask"),
                           (to / "compact", "compact model (float32"), (to / "model", "Hugging Face model"),
                           (to / "model.onnx", "outputs logits"), (shipped["run"] / "level_02" / "mask.safetensors",
                                                                   "mask (one byte per weight"),
                           (shipped["run"], "level_02  sparsity     75%")]:
        assert main(["inspect", str(path)]) == 0
        out = capsys.readouterr().out
        assert expected in out, out
        if "density per layer (share" in out:
            assert "query" in out and "ffn-out" in out


def damaged_copy(shipped, tmp_path, name, how):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(shipped["to"], copy)
    path = copy / name
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if how == "truncate" else data[:-1] + bytes([data[-1] ^ 1]))
    return copy


@pytest.mark.parametrize("name, how, call, message", [
    ("ticket.safetensors", "truncate", "apply", "ticket.safetensors is damaged"),
    ("ticket.safetensors", "flip", "apply", "its checksum does not match"),
    ("compact/compact.safetensors", "truncate", "compact", "compact.safetensors is damaged"),
    ("ticket.safetensors", "truncate", "inspect", "ticket.safetensors is damaged"),
    ("model.onnx", "truncate", "inspect", "model.onnx is damaged (it has"),
])
def test_a_damaged_artifact_is_one_clear_line(shipped, tmp_path, capsys, name, how, call, message):
    copy = damaged_copy(shipped, tmp_path, name, how)
    if call == "inspect":
        assert main(["inspect", str(copy / name)]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1
        return
    model = AutoModelForSequenceClassification.from_pretrained(shipped["model"], num_labels=2)
    with pytest.raises(lth.LthError, match=message):
        lth.apply_ticket(model, copy) if call == "apply" else load_compact(copy / "compact")


def test_a_run_mask_is_not_a_ticket_and_bad_export_input_is_one_line(shipped, tmp_path, capsys):
    model = AutoModelForSequenceClassification.from_pretrained(shipped["model"], num_labels=2)
    with pytest.raises(lth.LthError, match="is not an lth ticket"):
        lth.apply_ticket(model, shipped["run"] / "level_01" / "mask.safetensors")
    for argv, message in [(["export", str(shipped["run"]), "--level", "3", "--to", str(tmp_path)], "level 3 of"),
                          (["export", str(tmp_path), "--level", "1", "--to", str(tmp_path)], "not a run directory"),
                          (["export", str(shipped["run"]), "--to", str(tmp_path)], "say which level to export"),
                          (["inspect", str(tmp_path / "none")], "no such file or folder")]:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
