"""Models: the family table, loading, hashing and module lookup — the ground floor.

Model families are data, not code (DESIGN.md §5): a :class:`Family` names the module templates of one
architecture (``model.layers.{}.mlp.down_proj``), whether its projections use GPT-2's transposed Conv1D
layout, and the default edit layers. Everything above this module asks the family for names and never
spells a module path itself.

Where models come from (the embedded default, hub ids, the cache directory, weight hashes) lives in
:mod:`cathrepo.model_store`; its public names are re-exported here.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cathrepo.exceptions import ModelLoadError
from cathrepo.model_store import (  # re-exported: public names of cathrepo.models
    DEFAULT_MODEL,
    EMBEDDED,
    EMBEDDED_PREFIX,
    EmbeddedModel,
    ResolvedModel,
    cache_dir,
    file_stamps,
    resolve_model,
    weights_sha256,
)

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

__all__ = [  # the ground floor, including the names re-exported from cathrepo.model_store
    "DEFAULT_MODEL", "EMBEDDED", "EMBEDDED_PREFIX", "EmbeddedModel", "FAMILIES", "Family", "ResolvedModel",
    "cache_dir", "cache_kwargs", "default_device", "default_edit_layer", "family_for", "get_module",
    "is_conv1d", "load_model", "model_device", "num_layers", "preload",
    "output_cache", "resolve_model", "weight_shape", "weights_sha256",
]


@dataclass(frozen=True)
class Family:
    """Module templates and defaults of one architecture.

    Attributes:
        name: short family name recorded in edit records ("llama", "gpt2", ...).
        model_types: ``config.model_type`` values that belong to the family.
        layer: template of one transformer block.
        mlp_out: template of the MLP output projection (ROME/MEMIT's edited matrix).
        attn_out: template of the attention output projection.
        mlp: template of the MLP module (its output is the MLP contribution to the residual).
        attn: template of the attention module.
        embed: token embedding module.
        final_norm: the norm before the unembedding.
        lm_head: the unembedding module.
        conv1d: True when projections store weights as (in, out) (GPT-2's Conv1D).
        rome_layer_fraction: default ROME layer as a fraction of depth (ROME: 17/48 on GPT-2 XL).
        experts: template of fused MoE expert tensors, when the family is a mixture of experts.
    """

    name: str
    model_types: tuple[str, ...]
    layer: str
    mlp_out: str
    attn_out: str
    mlp: str
    attn: str
    embed: str
    final_norm: str
    lm_head: str
    conv1d: bool = False
    rome_layer_fraction: float = 0.2
    experts: str | None = None

    def layer_name(self, template_name: str, layer: int) -> str:
        """The module name of template ``template_name`` ("mlp_out", "attn_out", "mlp", "attn", "layer")
        at ``layer``."""
        template = getattr(self, template_name)
        if not isinstance(template, str) or "{}" not in template:
            raise ValueError(f"Family {self.name!r} has no per-layer template {template_name!r}")
        return template.format(layer)


_LLAMA_LIKE = dict(
    layer="model.layers.{}",
    mlp_out="model.layers.{}.mlp.down_proj",
    attn_out="model.layers.{}.self_attn.o_proj",
    mlp="model.layers.{}.mlp",
    attn="model.layers.{}.self_attn",
    embed="model.embed_tokens",
    final_norm="model.norm",
    lm_head="lm_head",
)

FAMILIES: tuple[Family, ...] = (
    Family(name="llama", model_types=("llama", "mistral", "qwen2", "qwen3", "phi3", "olmo2"), **_LLAMA_LIKE),
    Family(name="gemma", model_types=("gemma", "gemma2", "gemma3", "gemma3_text"), **_LLAMA_LIKE),
    Family(
        name="mixtral",
        model_types=("mixtral", "qwen2_moe", "qwen3_moe", "olmoe"),
        experts="model.layers.{}.mlp.experts",
        **_LLAMA_LIKE,
    ),
    Family(
        name="gpt2",
        model_types=("gpt2",),
        layer="transformer.h.{}",
        mlp_out="transformer.h.{}.mlp.c_proj",
        attn_out="transformer.h.{}.attn.c_proj",
        mlp="transformer.h.{}.mlp",
        attn="transformer.h.{}.attn",
        embed="transformer.wte",
        final_norm="transformer.ln_f",
        lm_head="lm_head",
        conv1d=True,
        rome_layer_fraction=0.35,
    ),
)


def family_for(model_or_type: Any) -> Family:
    """Look up the family of a model (or of a ``config.model_type`` string)."""
    model_type = model_or_type if isinstance(model_or_type, str) else model_or_type.config.model_type
    for family in FAMILIES:
        if model_type in family.model_types:
            return family
    known = sorted(t for f in FAMILIES for t in f.model_types)
    raise ModelLoadError(
        f"Model type '{model_type}' is not in cathrepo's family table.",
        hint=f"Supported types: {', '.join(known)}. Add a Family to cathrepo/models.py for others.",
    )


def num_layers(model: Any) -> int:
    config = model.config
    text = getattr(config, "text_config", None) or config
    return int(getattr(text, "num_hidden_layers", None) or text.n_layer)


def default_edit_layer(model: Any) -> int:
    """The default single edit layer of the model's family (ROME)."""
    family = family_for(model)
    return max(0, min(num_layers(model) - 1, round(family.rome_layer_fraction * num_layers(model))))


# --- module lookup ------------------------------------------------------------------------------


def get_module(model: Any, name: str) -> Any:
    """Return the submodule ``name`` or raise a clear error naming the closest one."""
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise ModelLoadError(
            f"The model has no module '{name}'.", hint="Check the layer index and the model family."
        ) from None


def is_conv1d(module: Any) -> bool:
    """True for GPT-2's Conv1D, whose weight is stored as (in, out)."""
    return type(module).__name__ == "Conv1D"


def weight_shape(module: Any) -> tuple[int, int]:
    """The (out_features, in_features) of a projection, whatever its storage layout."""
    rows, cols = module.weight.shape
    return (int(cols), int(rows)) if is_conv1d(module) else (int(rows), int(cols))


# --- loading ------------------------------------------------------------------------------------


#: Models a resident worker (``cathrepo worker``) loaded before it forked the process serving a command,
#: keyed by :func:`_preload_key`. Each is handed out once: the command that asks first gets the already
#: loaded model (copy-on-write memory of the worker), a second load in the same command reads the files.
_PRELOADED: dict[tuple[str, ...], tuple[Any, Any]] = {}


def _preload_key(path: Path | str, device: str, dtype: str) -> tuple[str, ...]:
    """The directory, device, dtype and every weight file's size, mtime and inode: a model rewritten on
    disk after the worker loaded it is read again."""
    root = Path(path).resolve()
    return (str(root), device, dtype, *file_stamps(sorted(p for p in root.iterdir() if p.is_file())))


def preload(path: Path | str, *, device: str | None = None, dtype: str = "float32") -> None:
    """Load a model now, so the next :func:`load_model` of the same directory returns it at once (the
    resident worker calls this before it serves commands)."""
    model, tokenizer = load_model(path, device=device, dtype=dtype)
    _PRELOADED[_preload_key(path, device or default_device(), dtype)] = (model, tokenizer)


def load_model(
    path: Path | str, *, device: str | None = None, dtype: str = "float32"
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer from a local directory, in eval mode with frozen weights."""
    if _PRELOADED:
        handed = _PRELOADED.pop(_preload_key(path, device or default_device(), dtype), None)
        if handed is not None:
            return handed
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=getattr(torch, dtype))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"Cannot load the model in '{path}': {exc}") from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.to(device or default_device())
    model.eval()
    model.requires_grad_(False)
    family_for(model)  # fail early on an unknown architecture
    return model, tokenizer


def default_device() -> str:
    """``CATHREPO_DEVICE`` if set, else CUDA when available, else CPU (never hard-coded)."""
    explicit = os.environ.get("CATHREPO_DEVICE")
    if explicit:
        return explicit
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def model_device(model: Any) -> torch.device:
    return next(model.parameters()).device


def cache_kwargs(model: Any, cache: Any) -> dict[str, Any]:
    """Keyword arguments that pass a KV cache to ``model.forward`` (transformers 5 renamed
    ``past_key_values`` to ``cache``)."""
    import inspect

    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    return {name: cache, "use_cache": True}


def output_cache(output: Any) -> Any:
    """The KV cache a forward returned, under either name."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else getattr(output, "past_key_values", None)

