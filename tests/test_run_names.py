"""Run names are the experiments' addresses: a refactor that renamed them would orphan every existing run. These
were computed by lth before the package was laid out in layers (commit 58d6f4a) and must never change."""
import pytest

from lth.run.layout import run_name
from lth.run.settings import find_settings
from lth.tasks import build_task

PINNED = [  # settings given, then the digest of the settings alone, with a data fingerprint, and with data=""
    ({"task": "mrpc", "precision": "bf16"}, ("6d3cb36cbb", "7c853746c7", "a8d66700bb")),
    ({"task": "mrpc", "precision": "fp32"}, ("08edc82bf0", "cf56980ce4", "0905ca7759")),
    ({"task": "mrpc", "precision": "bf16", "lr": 5e-05, "epochs": 2, "schedule": "remaining", "rate": 0.25,
      "max_sparsity": 0.7, "exclude": ["pooler"], "threads": 1}, ("ed223fabd4", "c6fdef6af6", "aef35d3130")),
    ({"task": "stsb", "precision": "bf16", "schedule": "remaining", "rate": 0.3, "exclude": ["pooler"],
      "levels": "3,5,7", "seeds": 3, "baselines": "random-prune"}, ("1bcdaf169b", "6ba3dcb1f6", "141ca79863")),
    ({"task": "squad", "precision": "fp32", "doc_stride": 64, "split_articles": "10:2"},
     ("d6973325c5", "13f702d310", "fd7d151476")),
    ({"task": "mlm", "precision": "bf16", "steps": 300, "batch_size": 16, "text_column": "body"},
     ("450709b1b2", "78b3d0f75e", "87d9ad319e")),
    ({"task": "my.csv", "precision": "bf16", "text_column": "t", "label_column": "y", "text_pair_column": "p"},
     ("8caae504ba", "8d80824806", "44a2ace682")),
    ({"task": "rte", "precision": "fp32", "strategy": "layerwise", "include": ["embeddings"], "rewind_step": 10},
     ("c0404eceff", "23eb9c4854", "4f4ec26bb5")),
    ({"task": "cola", "precision": "bf16", "warmup": 0.1, "weight_decay": 0.01, "seed": 7, "train_limit": 100,
      "eval_limit": 50}, ("8dc7013156", "ac303594b1", "5816fb891f")),
    ({"task": "sst2", "precision": "fp32", "model": "bert-base-uncased", "max_length": 64, "grad_accum": 2,
      "device": "cpu"}, ("2d8f2b2025", "0428e83d78", "e6e2556dea")),
    ({"precision": "bf16"}, ("1eb83108f5", "cd319a6982", "0a74512534")),  # the demo preset
    # what does not change results leaves the name alone: the same name as the first row
    ({"task": "mrpc", "precision": "bf16", "runs_dir": "elsewhere", "eval_batch_size": 7, "checkpoint_minutes": 1,
      "max_sparsity": 0.5}, ("6d3cb36cbb", "7c853746c7", "a8d66700bb")),
]


@pytest.mark.parametrize("given, digests", PINNED, ids=[str(i) for i in range(len(PINNED))])
def test_run_digests_are_pinned(given, digests):
    s = find_settings(**given)
    assert (s.digest(), s.digest("0123456789abcdef"), s.digest(data="")) == digests


def test_a_real_run_keeps_its_folder_name(shared_data):
    """The whole name, the data's fingerprint included, of the README's MRPC recipe searched on to 92%."""
    s = find_settings(model="minilm", task="mrpc", data=str(shared_data / "glue"), lr=5e-5, epochs=2,
                      schedule="remaining", rate=0.3, max_sparsity=0.92, exclude=["pooler"], precision="bf16")
    task = build_task(s)
    assert run_name(task.name, s.model, s.digest(task.fingerprint())) == "mrpc-minilm-68712df352"


def test_the_settings_groups_name_real_fields_and_the_recipe_is_what_a_unit_trains_with():
    from dataclasses import fields

    from lth.run.settings import GROUPS, FindSettings
    from lth.search.train import Recipe

    names = [f.name for f in fields(FindSettings)]
    grouped = [n for group in GROUPS.values() for n in group]
    assert set(grouped) <= set(names) and len(grouped) == len(set(grouped))
    assert set(GROUPS["recipe"]) == {f.name for f in fields(Recipe)} - {"max_grad_norm"}
    s = find_settings(task="mrpc", precision="fp32", lr=5e-5)
    assert Recipe(**s.group("recipe")).lr == 5e-5
    assert set(s.group("data")) == set(names) - set(grouped) and "task" in s.group("data")
    assert "checkpoint_minutes" not in s.group("recipe", hashed=True)
