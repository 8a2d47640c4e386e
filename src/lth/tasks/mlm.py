"""Masked-language-model pieces: raw text to fixed-size blocks, BERT masking, metrics, and an MLM head."""
from __future__ import annotations

import math
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from torch import nn

from ..core.datafiles import existing, field, is_data_file, records
from ..core.errors import LthError, short_reason
from ..core.fingerprints import fingerprint
from ..core.models import load_model, resolve_model
from .base import Task

IGNORE = -100  # the label cross-entropy skips: positions that were not chosen for prediction


def read_text(path: str) -> list[str]:
    """Lines of a raw text file, stripped, blank lines dropped."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise LthError(f"{path}: no such file; MLM needs a raw text file, one paragraph a line")
    try:
        return _nonempty(file.read_text(encoding="utf-8").splitlines(), path)
    except UnicodeDecodeError as e:
        raise LthError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8") from None


HUB_ID = re.compile(r"[\w.-]+(/[\w.-]+)?(:[\w.-]+)?")  # name, owner/name, and an optional :config


def text_lines(source: str, text_column: str = "text", split: str = "train") -> list[str]:
    """MLM text from a raw text file (one paragraph a line), the `text_column` of a .csv/.tsv/.jsonl/.json
    file, or the `text_column` of a hub dataset given as 'name' or 'name:config' (`split` picks its split)."""
    if is_data_file(source):
        rows = records(existing(source))
        return _nonempty([field(r, text_column, "--text-column", where) for where, r in rows], source)
    if is_hub_dataset(source):
        return _nonempty(_hub_text(source, text_column, split), f"{source} ({split})")
    return read_text(source)


def is_hub_dataset(source: str) -> bool:
    """'wikitext', 'user/corpus' or 'wikitext:wikitext-2-raw-v1' that is not a local path."""
    return not Path(source).expanduser().exists() and bool(HUB_ID.fullmatch(source)) and not Path(source).suffix


def _hub_text(spec: str, column: str, split: str) -> list[str]:
    name, _, config = spec.partition(":")
    try:
        import datasets

        dataset = datasets.load_dataset(name, config or None, split=split)
    except Exception as exc:  # network, auth, unknown name or split: the user's fix is the same
        raise LthError(f"could not load split '{split}' of the dataset '{spec}' from the Hugging Face hub "
                       f"({short_reason(exc)}); check the name (name or name:config), or give a local text file"
                       ) from exc
    if column not in dataset.column_names:
        raise LthError(f"the dataset '{spec}' has no column '{column}' (columns: {', '.join(dataset.column_names)});"
                       " pass --text-column with the right name")
    return [str(x) for x in dataset[column] if x is not None]


def _nonempty(lines: list[str], source: str) -> list[str]:
    lines = [line.strip() for line in lines if line.strip()]
    if not lines:
        raise LthError(f"{source} is empty: MLM needs raw text, one paragraph a line")
    return lines


def pack_blocks(lines: list[str], tokenizer, block_size: int = 128) -> list[dict]:
    """Tokenise, concatenate and cut the text into [CLS] chunk [SEP] blocks of exactly `block_size` tokens."""
    if block_size < 3:
        raise LthError(f"block size {block_size} is too small: a block holds [CLS], [SEP] and at least one token; "
                       "use --max-length 3 or more")
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    if cls is None or sep is None:
        raise LthError(f"the tokenizer {type(tokenizer).__name__} has no CLS/SEP tokens to wrap blocks with; "
                       "use an encoder's tokenizer (BERT, RoBERTa, ...)")
    # verbose=False: long paragraphs exceed model_max_length on purpose; they are cut into blocks below.
    enc = tokenizer(lines, add_special_tokens=False, return_attention_mask=False,
                    return_token_type_ids=False, verbose=False)
    ids = [i for row in enc["input_ids"] for i in row]
    chunk = block_size - 2
    if len(ids) < chunk:
        raise LthError(f"the text has {len(ids)} tokens, too few for one block of {block_size} "
                       f"({chunk} text tokens plus [CLS] and [SEP]); use a smaller --max-length or more text")
    # Literal special tokens in the text (e.g. [UNK]) are never prediction targets, as in Hugging Face's collator.
    special = set(tokenizer.all_special_ids)
    blocks = []
    for start in range(0, len(ids) - chunk + 1, chunk):
        block = [cls, *ids[start:start + chunk], sep]
        blocks.append({"input_ids": block, "special_tokens_mask": [int(i in special) for i in block]})
    return blocks


def mask_tokens(input_ids: torch.Tensor, special: torch.Tensor, mask_token_id: int, vocab_size: int,
                generator: torch.Generator, probability: float = 0.15) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking of a [B, L] batch: (masked input ids, labels with -100 where not chosen)."""
    if not 0.0 < probability < 1.0:
        raise LthError(f"masking probability {probability} is out of range; use a value between 0 and 1, "
                       "e.g. 0.15")
    shape, device = input_ids.shape, generator.device
    # Every draw comes from `generator`, on its device, so a seed fixes the masking wherever the batch lives.
    chance = torch.full(shape, probability, device=device).masked_fill_(special.to(device).bool(), 0.0)
    chosen = torch.bernoulli(chance, generator=generator).bool()
    action = torch.rand(shape, generator=generator, device=device)
    random_ids = torch.randint(vocab_size, shape, generator=generator, device=device)
    chosen, action, random_ids = (t.to(input_ids.device) for t in (chosen, action, random_ids))
    masked = input_ids.clone()
    masked[chosen & (action < 0.8)] = mask_token_id
    swap = chosen & (action >= 0.8) & (action < 0.9)  # the last 10% keep their token
    masked[swap] = random_ids[swap].to(input_ids.dtype)
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, IGNORE))
    return masked, labels


def _block_generator(seed: int, index: int) -> torch.Generator:
    """A generator whose seed depends on both `seed` and `index`, without collisions between the pairs."""
    state = int(np.random.SeedSequence([seed, index]).generate_state(1, dtype=np.uint64)[0])
    return torch.Generator().manual_seed(state)


def fixed_eval_masking(blocks: list[dict], mask_token_id: int, vocab_size: int, seed: int = 0) -> list[dict]:
    """Each block masked once, the same way on every call, so models are compared on the same positions."""
    features = []
    for index, block in enumerate(blocks):
        ids = torch.tensor([block["input_ids"]])
        special = torch.tensor([block["special_tokens_mask"]], dtype=torch.bool)
        masked, labels = mask_tokens(ids, special, mask_token_id, vocab_size, _block_generator(seed, index))
        features.append({"input_ids": masked[0].tolist(), "labels": labels[0].tolist()})
    return features


def mlm_metrics(correct: int, total: int, loss_sum: float) -> dict[str, float]:
    """Accuracy, mean cross-entropy per masked token, and its exponential, from sums over masked tokens."""
    if total <= 0:
        raise LthError("no masked tokens to score: the evaluation text is too short; give more evaluation text")
    loss = loss_sum / total
    return {"masked_accuracy": correct / total, "loss": loss,
            "perplexity": math.exp(loss) if loss < 700 else math.inf}  # exp overflows a float past ~709


def attach_mlm_head(model_name_or_path: str, seed: int) -> tuple[nn.Module, bool]:
    """The encoder with an MLM head, a missing head initialised from `seed`: (model, head_was_new)."""
    path = resolve_model(model_name_or_path)
    model, info = load_model(model_name_or_path, "masked-LM", seed, output_loading_info=True)
    head_was_new = _head_missing(model, info["missing_keys"])
    if head_was_new:
        _tie_decoder(model)
    _restore_pooler(model, path, seed)
    return model, head_was_new


def _head_missing(model: nn.Module, missing_keys) -> bool:
    """True if any head weight (a parameter outside the base model) was absent from the checkpoint."""
    prefix = model.base_model_prefix + "."
    head = {name for name in model.state_dict() if not name.startswith(prefix)}
    return bool(head & set(missing_keys))


def _tie_decoder(model: nn.Module) -> None:
    """Tie a new decoder to the word embeddings, as BERT pretraining does, instead of leaving it random."""
    if model.get_output_embeddings().weight is model.get_input_embeddings().weight:
        return
    model.config.tie_word_embeddings = True
    model.tie_weights()
    if model.get_output_embeddings().weight is not model.get_input_embeddings().weight:
        model.get_output_embeddings().weight = model.get_input_embeddings().weight


def _restore_pooler(model: nn.Module, path: str, seed: int) -> None:
    """Give the encoder back the pooler that *ForMaskedLM drops when the classification model has one, so
    their parameter names (and so a mask found on MLM) match; the pooler gets no gradient from the MLM loss."""
    from transformers import AutoModel

    base = model.base_model
    if getattr(base, "pooler", False) is not None or not _classifier_has_pooler(model.config):
        return  # nothing dropped (no pooler in the architecture, or the MLM model kept it), or nothing to match
    torch.manual_seed(seed)  # a checkpoint without pooler weights gets a seeded one, as classification does
    full = AutoModel.from_pretrained(path, attn_implementation="eager")
    if type(full) is type(base) and getattr(full, "pooler", None) is not None:
        base.pooler = full.pooler


def _classifier_has_pooler(config) -> bool:
    """Whether AutoModelForSequenceClassification keeps the encoder's pooler (BERT does, RoBERTa does not)."""
    from transformers import AutoModelForSequenceClassification

    with torch.device("meta"):  # the skeleton only: no memory, no weight initialisation
        skeleton = AutoModelForSequenceClassification.from_config(config)
    return getattr(skeleton.base_model, "pooler", None) is not None


def masked_positions_forward(model: nn.Module, batch: dict) -> SimpleNamespace:
    """The MLM loss with the head computed at the masked positions only.

    The vocabulary projection is the largest matrix of a small encoder (30522 x 384 in MiniLM, as many
    multiply-adds per token as two encoder layers); only ~15% of positions have a label, so the head runs
    on those rows alone. The loss equals the model's own (mean cross-entropy over labelled positions).
    Returns loss, logits [masked, vocab], labels [masked] and rows (the block of each masked token).
    Models whose head is not one module beside the encoder fall back to the full forward."""
    labels = batch["labels"]
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    chosen = labels != IGNORE
    head = _lm_head(model)
    if head is None:
        logits = model(**inputs).logits[chosen]
    else:
        hidden = getattr(model, model.base_model_prefix)(**inputs).last_hidden_state
        logits = head(hidden[chosen])
    targets = labels[chosen]
    if len(targets):
        loss = torch.nn.functional.cross_entropy(logits.float(), targets)
    else:  # nothing masked in this batch: a zero that still belongs to the graph
        loss = logits.sum() * 0.0
    return SimpleNamespace(loss=loss, logits=logits, labels=targets, rows=chosen.nonzero()[:, 0])


def _lm_head(model: nn.Module) -> nn.Module | None:
    """The MLM head when it is the one module beside the encoder (BERT's `cls`, RoBERTa's `lm_head`...)."""
    heads = [module for name, module in model.named_children() if name != model.base_model_prefix]
    return heads[0] if len(heads) == 1 else None


class MaskedLMTask(Task):
    """Masked-LM for the trunk: packed blocks, BERT masking drawn afresh every step, fixed masking to evaluate."""

    metric_names = ["masked_accuracy", "loss", "perplexity"]
    primary = "masked_accuracy"
    name = "mlm"
    head = "masked-LM"
    fixed_inputs = False  # tokens are masked afresh every step: the teacher runs beside the student

    def __init__(self, data: str, eval: str | None, seed: int, train_limit: int | None = None,
                 eval_limit: int | None = None, text_column: str = "text"):
        self.notes = []
        if data is None:
            raise LthError("--task mlm needs --data: a raw text file (one paragraph a line), a .csv/.jsonl file "
                           "with --text-column, or a hub dataset such as wikitext:wikitext-2-raw-v1")
        if eval is None:
            if not is_hub_dataset(data):
                raise LthError("--task mlm needs --eval with held-out text to measure masked-token accuracy on "
                               "(a hub dataset uses its validation split when --eval is not given)")
            eval = data
            self.notes.append(f"training on the train split of {data}, evaluating on its validation split")
        self.train_lines = text_lines(data, text_column, "train")
        self.eval_lines = text_lines(eval, text_column, "validation")
        self.seed, self.limits = seed, (train_limit, eval_limit)
        self.mask_id = self.vocab_size = None

    def load_model(self, name: str, seed: int):
        model, new = attach_mlm_head(name, seed)
        self.new_head = new
        if new:
            self.notes.append("the checkpoint has no MLM head: a new one was made (seeded, decoder tied to the "
                              "word embeddings) and is part of the rewind point")
        return model

    def sizes(self) -> dict[str, int]:
        return {"train_lines": len(self.train_lines), "eval_lines": len(self.eval_lines)}

    def fingerprint(self) -> str:
        return fingerprint([self.train_lines, self.eval_lines])

    def train_features(self, tokenizer, max_length: int) -> list[dict]:
        self.mask_id, self.vocab_size = tokenizer.mask_token_id, len(tokenizer)
        return pack_blocks(self.train_lines, tokenizer, max_length)[:self.limits[0]]

    def eval_features(self, tokenizer, max_length: int) -> dict[str, list[dict]]:
        blocks = pack_blocks(self.eval_lines, tokenizer, max_length)[:self.limits[1]]
        return {"dev": fixed_eval_masking(blocks, tokenizer.mask_token_id, len(tokenizer), seed=0)}

    def prepare(self, batch: dict, step: int) -> dict:
        """Mask afresh each step; seeded by the step so a resumed run masks exactly as before."""
        special = batch.pop("special_tokens_mask").bool()
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        batch["input_ids"], batch["labels"] = mask_tokens(batch["input_ids"], special, self.mask_id,
                                                          self.vocab_size, generator)
        return batch

    @staticmethod
    def forward(model: nn.Module, batch: dict, train: bool) -> SimpleNamespace:
        return masked_positions_forward(model, batch)

    @staticmethod
    def collect(batch: dict, output) -> list[tuple[int, int, float]]:
        """Per block: masked tokens predicted right, masked tokens, summed loss."""
        rows = len(batch["input_ids"])
        logits, labels, block = output.logits.float(), output.labels, output.rows
        losses = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
        per_block = [torch.zeros(rows, dtype=torch.float64).index_add_(0, block, v.double())
                     for v in (logits.argmax(-1) == labels, torch.ones_like(losses), losses)]
        return list(zip(per_block[0].long().tolist(), per_block[1].long().tolist(), per_block[2].tolist()))

    def score(self, split: str, outputs: list) -> dict[str, float]:
        correct, total, loss = (sum(column) for column in zip(*outputs))
        return mlm_metrics(correct, total, loss)
