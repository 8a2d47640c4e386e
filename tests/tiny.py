"""Tiny random encoders and a learnable toy dataset, built in seconds for end-to-end tests."""
from __future__ import annotations

import csv
import random
from pathlib import Path

POSITIVE = ["good", "great", "fine", "lovely", "superb"]
NEGATIVE = ["bad", "awful", "poor", "boring", "dull"]
NEUTRAL = ["the", "a", "movie", "film", "plot", "was", "is", "acting", "story", "very"]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def write_tokenizer(folder: Path, with_token_types: bool = True):
    from transformers import BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(SPECIAL + POSITIVE + NEGATIVE + NEUTRAL) + "\n")
    names = ["input_ids", "token_type_ids", "attention_mask"] if with_token_types else ["input_ids", "attention_mask"]
    # transformers 5 ignores `vocab_file=` here (every word became [UNK]); `vocab=` is honoured.
    tok = BertTokenizerFast(vocab=str(folder / "vocab.txt"), model_input_names=names)
    assert tok.convert_tokens_to_ids("good") == len(SPECIAL), "tiny tokenizer lost its vocabulary"
    tok.save_pretrained(folder)
    return tok


def make_tiny(folder: Path, arch: str = "bert", seed: int = 0, hidden: int = 32, layers: int = 2,
              dropout: float = 0.1) -> str:
    """A random 2-layer encoder of the given architecture, saved like a hub checkpoint (`dropout`: BERT's)."""
    import torch
    from transformers import AutoModel, BertConfig, DistilBertConfig, ElectraConfig, RobertaConfig

    vocab = len(SPECIAL + POSITIVE + NEGATIVE + NEUTRAL)
    common = dict(vocab_size=vocab, max_position_embeddings=512, pad_token_id=0)
    config = {
        "bert": lambda: BertConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                                   intermediate_size=2 * hidden, hidden_dropout_prob=dropout,
                                   attention_probs_dropout_prob=dropout, **common),
        "roberta": lambda: RobertaConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                                         intermediate_size=2 * hidden, type_vocab_size=1, **common),
        "distilbert": lambda: DistilBertConfig(dim=hidden, n_layers=layers, n_heads=2, hidden_dim=2 * hidden,
                                               **common),
        "electra": lambda: ElectraConfig(embedding_size=16, hidden_size=hidden, num_hidden_layers=layers,
                                         num_attention_heads=2, intermediate_size=2 * hidden, **common),
    }[arch]()
    torch.manual_seed(seed)
    AutoModel.from_config(config).save_pretrained(folder)
    write_tokenizer(folder, with_token_types=arch in ("bert", "electra"))
    return str(folder)


def sentiment_rows(n: int, seed: int) -> list[tuple[str, int]]:
    """Label 1 when a positive word is present, else 0: learnable by a tiny model in a few steps."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.randint(0, 1)
        words = rng.choices(NEUTRAL, k=rng.randint(3, 10)) + [rng.choice(POSITIVE if label else NEGATIVE)]
        rng.shuffle(words)
        rows.append((" ".join(words), label))
    return rows


def write_csv(path: Path, rows: list[tuple[str, int]]) -> str:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows(rows)
    return str(path)


def toy_task(folder: Path, n_train: int = 96, n_eval: int = 32) -> tuple[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    return (write_csv(folder / "train.csv", sentiment_rows(n_train, 1)),
            write_csv(folder / "dev.csv", sentiment_rows(n_eval, 2)))


def searched(root: Path, **recipe) -> dict:
    """A toy task, a tiny BERT and a finished search on them (lth.find with `recipe`): root, model, train, dev, run."""
    import lth

    train, dev = toy_task(root / "data")
    model = make_tiny(root / "model")
    run = Path(lth.find(model=model, task=train, eval=dev, runs_dir=str(root / "runs"), **recipe)["run"])
    return {"root": root, "model": model, "train": train, "dev": dev, "run": run}
