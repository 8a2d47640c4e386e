"""The fast engine: a trained ticket whose pruned linear layers run sparse kernels where that is faster.

`load_fast(folder)` returns an nn.Module with the Hugging Face forward. Each pruned linear layer keeps its dense
weights too and, for each size of input it meets (tokens rounded up to a power of two), times the sparse kernel
against the dense matmul once and uses the faster from then on: at 90% sparsity the kernel wins, at 50% the
dense matmul does, and neither is ever slower than lth's dense path. The rest of the model (attention, softmax,
LayerNorm, GELU) runs in bf16 autocast where the CPU computes bf16 natively, and BERT-style layers run a lean
forward with fewer ops (`lean_layers`)."""
from __future__ import annotations

import time
from pathlib import Path

import torch
from torch import nn

from .errors import LthError
from .kernels import (ATTENTION_SIZES, CSR, attention_dtypes, backend, fused_attention, pair_kernel,
                      sparse_linear)
from .parallel import auto_precision
from .train import autocast

DENSE_ABOVE = 0.8  # a matrix keeping more than this is never worth a sparse kernel
ROUNDS = 3  # timed rounds per implementation when a layer chooses, after one warm-up call of each


class SparseLinear(nn.Module):
    """A pruned nn.Linear that runs whichever of the sparse kernel and the dense matmul is faster here.

    `bf16`: the sparse kernel returns bf16, as the dense matmul does under bf16 autocast, and where the CPU has
    AVX512-BF16 it also multiplies as that matmul does, bf16 weights by bf16 activations summed in fp32 (the pair
    kernel, twice the products per instruction and half the bytes); elsewhere it multiplies in fp32. `gelu` (the
    FFN's first layer): GELU is applied inside the kernel, on values still in registers, instead of a second pass."""

    def __init__(self, linear: nn.Linear, bf16: bool = False, gelu: nn.Module | None = None):
        super().__init__()
        self.dense, self.bf16, self.gelu = linear, bf16, gelu
        self.csr = CSR(linear.weight, linear.bias, pairs=bf16 and pair_kernel())
        self.choice: dict[int, str] = {}
        self.sparse_ok = backend()[0] != "none"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bucket = 1 << max(0, (x.numel() // x.shape[-1] - 1).bit_length())
        if bucket not in self.choice:
            self.choice[bucket] = self._faster(x) if self.sparse_ok else "dense"
        return self._sparse(x) if self.choice[bucket] == "sparse" else self._dense(x)

    def _sparse(self, x: torch.Tensor) -> torch.Tensor:
        return sparse_linear(x, self.csr, gelu=self.gelu is not None, bf16_out=self.bf16)

    def _dense(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dense(x)
        return self.gelu(y) if self.gelu is not None else y

    def _faster(self, x: torch.Tensor) -> str:
        self._sparse(x), self._dense(x)  # warm both: the first call of each pays for caches and allocation
        timings = {}
        for _ in range(ROUNDS):  # interleaved, the best of each: a single timing is too noisy to choose by
            for name, run in (("sparse", self._sparse), ("dense", self._dense)):
                start = time.perf_counter()
                run(x)
                timings[name] = min(timings.get(name, float("inf")), time.perf_counter() - start)
        return min(timings, key=timings.get)



class FastModel(nn.Module):
    """The model with its pruned layers swapped; calls run without gradients, in bf16 autocast where native.

    BERT-style encoder layers also get a lean forward (`lean_layers`)."""

    def __init__(self, model: nn.Module, precision: str):
        super().__init__()
        self.model, self.precision = model.eval(), precision
        self.config = model.config
        self.lean = lean_layers(model)

    def forward(self, **inputs):
        with torch.inference_mode(), autocast(torch.device("cpu"), self.precision):
            return self.model(**inputs)

    def train(self, mode: bool = True) -> "FastModel":
        """Always in evaluation: an engine for inference (callers that switch a model back to training after
        evaluating it, as lth's own evaluation does, leave its dropout off)."""
        return super().train(False)

    def layers(self) -> dict[str, str]:
        """Per swapped layer, which implementation each input size uses (after the first calls)."""
        return {name: ",".join(f"{b}:{c}" for b, c in sorted(m.choice.items())) or "not run yet"
                for name, m in self.model.named_modules() if isinstance(m, SparseLinear)}


def lean_layers(model: nn.Module) -> int:
    """Give every BERT-style encoder layer a forward with fewer ops; returns how many layers got it.

    The same computation as the Hugging Face eager layer in evaluation: Q, K and V, scores, mask, softmax,
    context, the output projection, residual and LayerNorm, the FFN, residual and LayerNorm — without its
    dropout calls, attention-interface dispatch and chunking helpers, whose many small ops cost interpreter time
    at batch 1, and with attention as `_LeanForward` computes it (torch's fused scaled_dot_product_attention was
    measured too: in the engine at batch 32 x 128 it took 12.9 ms a layer, autocast's eager attention 10). Layers
    that differ (relative positions, cross-attention, a decoder, another attention scale) keep their own forward."""
    count, masks = 0, _Masks()
    for module in model.modules():
        if _standard_layer(module):
            _fuse_qkv(module.attention.self)
            module.forward = _LeanForward(module, masks)
            count += 1
    return count


def _fuse_qkv(att: nn.Module) -> None:
    """Q, K and V as one linear layer `att.qkv` (their rows stacked) in place of three, where all three are plain
    nn.Linear or all SparseLinear: one call reads the input once instead of three times (4% of the whole model's
    time at batch 32 x 128 on 70-90% sparse MiniLM, measured). The three are removed, their memory freed."""
    parts = [att.query, att.key, att.value]
    if {type(p) for p in parts} not in ({nn.Linear}, {SparseLinear}):
        return
    dense = [p.dense if isinstance(p, SparseLinear) else p for p in parts]
    if any(d.bias is None for d in dense) or len({d.in_features for d in dense}) > 1:
        return
    fused = nn.Linear(dense[0].in_features, sum(d.out_features for d in dense), dtype=dense[0].weight.dtype)
    with torch.no_grad():
        fused.weight.copy_(torch.cat([d.weight for d in dense]))
        fused.bias.copy_(torch.cat([d.bias for d in dense]))
    att.qkv = SparseLinear(fused, parts[0].bf16) if isinstance(parts[0], SparseLinear) else fused
    del att.query, att.key, att.value


def _standard_layer(layer: nn.Module) -> bool:
    att = getattr(getattr(layer, "attention", None), "self", None)
    out = getattr(getattr(layer, "attention", None), "output", None)
    ffn = getattr(layer, "output", None)
    if att is None or out is None or ffn is None or not hasattr(layer, "intermediate"):
        return False
    if not all(isinstance(getattr(att, n, None), nn.Module) for n in ("query", "key", "value")):
        return False
    if not all(isinstance(getattr(m, n, None), nn.Module) for m in (out, ffn) for n in ("dense", "LayerNorm")):
        return False
    heads, size = getattr(att, "num_attention_heads", None), getattr(att, "attention_head_size", None)
    return (isinstance(heads, int) and isinstance(size, int)
            and getattr(att, "position_embedding_type", "absolute") == "absolute"
            and not getattr(layer, "is_decoder", False) and not getattr(layer, "add_cross_attention", False)
            and abs(getattr(att, "scaling", size ** -0.5) - size ** -0.5) < 1e-12)


class _LeanForward:
    """A BERT layer's forward in few ops (see lean_layers); HF calls it with (hidden, mask, ...).

    Where the fused attention kernel is built for Q's dtype and has its head size, Q, K and V (fused, see
    `_fuse_qkv`) go to it (`kernels.fused_attention`). Otherwise attention runs outside autocast in the
    dtype of Q: the scores as one batched product that also scales and adds the mask (baddbmm), softmax on them
    directly (in bf16 torch still sums in fp32), then the context. Under autocast the same steps cast the scores
    to fp32 and back and take three more passes over them (22% of the whole model's time at batch 32 x 128, 70%
    sparse MiniLM, measured)."""

    def __init__(self, layer: nn.Module, masks: "_Masks"):
        self.layer, self.masks = layer, masks
        size = layer.attention.self.attention_head_size
        self.fused = attention_dtypes() if size in ATTENTION_SIZES else set()  # the dtypes the kernel takes

    def __call__(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, *args, **kwargs):
        batch, tokens, width = hidden_states.shape
        att = self.layer.attention.self
        heads, size = att.num_attention_heads, att.attention_head_size
        if hasattr(att, "qkv"):
            qkv = att.qkv(hidden_states)
            if qkv.dtype in self.fused and qkv.device.type == "cpu":
                mask = self.masks.additive(attention_mask, heads, qkv.dtype)
                context = fused_attention(qkv, mask, heads, size ** -0.5)
                return self._rest(context, hidden_states)
            q, k, v = qkv.split(heads * size, -1)
        else:
            q, k, v = att.query(hidden_states), att.key(hidden_states), att.value(hidden_states)
        with torch.autocast(hidden_states.device.type, enabled=False):
            split = (batch, tokens, heads, size)
            q = q.reshape(split).transpose(1, 2).reshape(batch * heads, tokens, size)
            k = k.to(q.dtype).reshape(split).permute(0, 2, 3, 1).reshape(batch * heads, size, tokens)
            v = v.to(q.dtype).reshape(split).transpose(1, 2).reshape(batch * heads, tokens, size)
            mask = self.masks.additive(attention_mask, heads, q.dtype)
            if mask is None:  # beta=0: the product alone (scaled on the way out: 20% faster than bmm, then mul)
                scores = torch.baddbmm(q.new_empty(batch * heads, tokens, tokens), q, k, beta=0.0, alpha=size ** -0.5)
            else:
                scores = torch.baddbmm(mask, q, k, alpha=size ** -0.5)
            context = torch.bmm(scores.softmax(-1), v).view(batch, heads, tokens, size)
            context = context.transpose(1, 2).reshape(batch, tokens, width)
        return self._rest(context, hidden_states)

    def _rest(self, context: torch.Tensor, hidden_states: torch.Tensor) -> torch.Tensor:
        """The output projection, residual and LayerNorm, the FFN, residual and LayerNorm."""
        layer = self.layer
        out, ffn = layer.attention.output, layer.output
        attended = out.LayerNorm(out.dense(context) + hidden_states)
        return ffn.LayerNorm(ffn.dense(layer.intermediate(attended)) + attended)


class _Masks:
    """The attention mask HF hands every layer, converted once per forward (the same tensor comes to each layer):
    additive, finite in the scores' dtype, one row per sequence where all its rows are equal (a padding mask), and
    shaped (batch x heads, rows, keys) as baddbmm and the fused attention kernel take it."""

    def __init__(self):
        self.last: tuple = (None, None, None)  # (mask, (heads, dtype), converted): one tuple, swapped whole

    def additive(self, mask: torch.Tensor | None, heads: int, dtype: torch.dtype) -> torch.Tensor | None:
        if mask is None:
            return None
        source, key, value = self.last  # read once: another thread's call may replace it meanwhile
        if mask is source and key == (heads, dtype):
            return value
        low = torch.finfo(dtype).min
        converted = torch.where(mask, 0.0, low) if mask.dtype == torch.bool else mask.clamp(min=low)
        if converted.dim() < 4:  # (batch, keys) or (batch, rows, keys): no heads axis
            converted = converted[:, None, None, :] if converted.dim() == 2 else converted[:, None]
        if converted.shape[-2] > 1 and bool((converted == converted[..., :1, :]).all()):
            converted = converted[..., :1, :]
        batch, _, rows, keys = converted.shape
        value = converted.to(dtype).expand(batch, heads, rows, keys).reshape(batch * heads, rows, keys)
        self.last = (mask, (heads, dtype), value)
        return value


def sparsify(model: nn.Module, names: list[str] | None = None, bf16: bool = False) -> int:
    """Swap every pruned nn.Linear (or those whose weight is in `names`) for a SparseLinear; returns how many.

    A BERT-style FFN-in (a module with `dense` and an exact GELU as `intermediate_act_fn`) gets GELU fused."""
    swapped = 0
    for parent_name, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            full = f"{parent_name}.{child_name}" if parent_name else child_name
            if not isinstance(child, nn.Linear) or (names is not None and f"{full}.weight" not in names):
                continue
            if float((child.weight != 0).float().mean()) > DENSE_ABOVE:
                continue
            act = getattr(parent, "intermediate_act_fn", None)
            fused = child_name == "dense" and _exact_gelu(act)
            setattr(parent, child_name, SparseLinear(child, bf16, act if fused else None))
            if fused:  # the FFN-in is now its linear layer alone: GELU happens inside it
                object.__setattr__(parent, "forward", getattr(parent, child_name))
            swapped += 1
    return swapped


def _exact_gelu(act) -> bool:
    """Whether an activation is the erf GELU the kernel computes (transformers' "gelu", or nn.GELU())."""
    if isinstance(act, nn.GELU):
        return act.approximate == "none"
    return type(act).__name__ == "GELUActivation" and getattr(act, "act", None) in (
        nn.functional.gelu, getattr(act, "_gelu_python", None)) and not getattr(act, "use_gelu_python", False)


def load_fast(path: str | Path, precision: str = "auto") -> FastModel:
    """The trained ticket of an export folder (or any Hugging Face folder with pruned weights) on the fast engine.

    `precision`: 'auto' (bf16 where the CPU has it natively, unless the export measured that bf16 moves the
    ticket's dev metric by more than the tolerance: fp32 then and elsewhere), 'bf16' or 'fp32'."""
    import transformers

    from .models import quiet_transformers

    if precision not in ("auto", "bf16", "fp32"):
        raise LthError(f"precision {precision!r}: give 'auto', 'bf16' or 'fp32'")
    quiet_transformers()
    folder = Path(path).expanduser()
    folder = folder / "model" if (folder / "model" / "config.json").is_file() else folder
    if not (folder / "config.json").is_file():
        raise LthError(f"no model at {path}; give a folder written by lth export (or its model/ folder)")
    config = transformers.AutoConfig.from_pretrained(folder)
    try:
        model = getattr(transformers, config.architectures[0]).from_pretrained(folder, attn_implementation="eager")
    except Exception as exc:  # a damaged or foreign folder
        raise LthError(f"could not load the model in {folder} ({type(exc).__name__}); export it again") from None
    if precision == "auto":
        native = auto_precision(torch.device("cpu"))
        precision = native if native == "fp32" or _bf16_keeps_the_metric(folder.parent) else "fp32"
    sparsify(model, _pruned_names(folder.parent), bf16=precision == "bf16")
    return FastModel(model, precision)


def _bf16_keeps_the_metric(export: Path) -> bool:
    """False where `lth export` measured the engine in bf16 moving the dev metric past the tolerance (ticket.json's
    `fast_engine`); True where it did not, or where nothing was measured."""
    if not (export / "ticket.json").is_file():
        return True
    from .files import load_json

    engine = load_json(export / "ticket.json").get("fast_engine") or {}
    return engine.get("precision") != "bf16" or engine.get("within_tolerance", True)


def _pruned_names(export: Path) -> list[str] | None:
    """The weights the ticket prunes, when the folder is an export with its ticket."""
    if not (export / "ticket.safetensors").is_file():
        return None
    from .tickets import read_meta

    return list(read_meta(export / "ticket.safetensors")["shapes"])


def predict_file(path: str | Path, source: str, target: str, text_column: str = "text",
                 pair_column: str | None = None, batch_size: int = 64, precision: str = "auto") -> int:
    """Label every row of a .csv/.tsv/.jsonl file with an exported classifier on the fast engine (`precision` as
    in load_fast); writes a TSV of row, label and the scores; returns the rows written."""
    import csv

    from tqdm.auto import tqdm
    from transformers import AutoTokenizer

    from .batches import collate, evaluation_order
    from .files import atomic_path
    from .tasks.text import _existing, _field, _records

    fast = load_fast(path, precision)
    if not hasattr(fast.model, "num_labels") or "ForSequenceClassification" not in type(fast.model).__name__:
        raise LthError(f"lth predict labels text with a classifier; {path} holds a {type(fast.model).__name__}")
    tokenizer = AutoTokenizer.from_pretrained(fast.model.name_or_path)  # the folder load_fast found
    records = _records(_existing(source))
    texts = [_field(r, text_column, "--text-column", where) for where, r in records]
    pairs = None if pair_column is None else [_field(r, pair_column, "--text-pair-column", w) for w, r in records]
    encoded = tokenizer(texts, pairs, truncation=True, max_length=512, padding=False)
    features = [{k: encoded[k][i] for k in ("input_ids", "token_type_ids") if k in encoded} for i in range(len(texts))]
    labels = fast.config.id2label
    scores: list = [None] * len(features)
    with tqdm(total=len(features), desc="predict", unit="ex", dynamic_ncols=True) as bar:
        for ids in evaluation_order([len(f["input_ids"]) for f in features], batch_size):
            logits = fast(**collate([features[i] for i in ids], tokenizer.pad_token_id or 0)).logits.float()
            for i, row in zip(ids, logits.tolist()):
                scores[i] = row
            bar.update(len(ids))
    with atomic_path(target) as tmp, open(tmp, "w", newline="") as handle:
        out = csv.writer(handle, delimiter="\t")
        regression = len(scores[0]) == 1
        out.writerow(["row", "score" if regression else "label", *([] if regression else [f"score_{labels[i]}"
                                                                                         for i in range(len(labels))])])
        for row, values in enumerate(scores):
            best = max(range(len(values)), key=values.__getitem__)
            out.writerow([row, f"{values[0]:.6f}"] if regression else [row, labels[best], *(f"{v:.6f}" for v in values)])
    return len(scores)
