"""MEMIT's hyper-parameters: one dataclass, defaults per model family (STYLE.md §4).

MEMIT (Meng et al. 2023) writes a batch of facts into the MLP output projections of several consecutive
layers. The target of each fact is found as ROME finds its value, at the last of those layers (the
residual stream there must move by δ); the value fields below are ROME's and mean the same
(:class:`~cathrepo.edits.rome.params.RomeParams`). ``mom2_weight`` weighs the corpus keys' second moment
against the batch's keys in the least-squares update (MEMIT's ``mom2_update_weight``; its published
settings are 15,000 on GPT-J and 20,000 on GPT-2 XL, against a second moment of mean keys as here).

A key's reach through ``(λC)⁻¹`` grows with the key width (``kᵀC⁻¹k`` is about the width for a corpus key:
16,384 on GPT-J, 1,536 here), so the weight scales down with it. Tuned on CounterFact records 5000-5099,
100 facts in ten sequential batches of ten (``bench edits --sequential --batch-size 10``; ES / PS / NS /
retention after all 100, unedited NS 0.72): ``mom2_weight`` 500: 0.97 / 0.95 / 0.71 / 0.856; **1500:
0.95 / 0.92 / 0.71 / 0.888**; 5000: 0.87 / 0.79 / 0.70 / 0.920 (the published 15,000 was not run
through this benchmark). Five layers instead of three: 0.96 / 0.94 / 0.72 / 0.864; holding the
updates off 600 known subjects' keys (``protect_facts``): 0.92 / 0.79 / 0.71 / 0.896 (the projection
takes the generalisation with it); without ``null_space``: 0.97 / 0.93 / 0.71 / 0.872, neighbours' KL
0.28 against 0.18; held off the corpus keys' top 512 directions (``corpus_rank``): 0.95 / 0.90 / 0.70 / 0.880.
BENCHMARKS.md has the table.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from cathrepo.edits.rome.params import FAMILY_DEFAULTS as ROME_DEFAULTS
from cathrepo.edits.rome.params import RomeParams
from cathrepo.exceptions import InvalidInputError


def _help(text: str, default: Any) -> Any:
    return field(default=default, metadata={"help": text})


#: The fields shared with ROME's value optimisation (same names, same meaning).
VALUE_FIELDS = ("n_context", "context_tokens", "v_steps", "v_lr", "v_stop_nll", "v_stop_prob", "kl_factor",
                "v_weight_decay", "clamp_norm_factor", "seed", "precision", "phrasings", "phrasing_prefixes",
                "phrasing_stop", "v_solver", "v_passes", "v_margin", "v_radius", "cov_reg", "corpus_tokens")


@dataclass(frozen=True)
class MemitParams:
    """Parameters of a MEMIT edit; ``layers=None`` means the family's default span around ROME's layer."""

    layers: tuple[int, ...] | None = _help("Layers whose MLP output projections are edited, bottom to top (None: "
                                           "ROME's default layer and span-1 layers below it).", None)
    span: int = _help("With layers=None, how many consecutive layers end at ROME's default layer.", 3)
    mom2_weight: float = _help("Weight of the corpus keys' second moment against the batch's keys (MEMIT's "
                               "mom2_update_weight; scaled to the key width, see above).", 1500.0)
    null_space: bool = _help("Project each layer's update off the keys of the edits already active "
                             "(AlphaEdit's preserved keys, held exactly): earlier answers stay where they were.",
                             True)
    protect_facts: int = _help("Known facts (the protected half of the known-facts file; the retention gate "
                               "measures the other half) whose subject keys every layer's update is held off, "
                               "as the active edits' (0: off).", 0)
    corpus_rank: int = _help("The corpus keys' top eigen-directions (of each layer's second moment) every update is "
                             "held exactly off, as AlphaEdit holds its preserved-knowledge null space (0: off; "
                             "the corpus is then held by mom2_weight alone).", 0)
    n_context: int = _help("Generated context prefixes averaged into keys and targets.", 5)
    context_tokens: int = _help("Length in tokens of each generated context prefix.", 10)
    v_steps: int = _help("Maximum Adam steps of the target optimisation (v_solver adam).", 60)
    v_lr: float = _help("Adam learning rate of the target optimisation.", 0.2)
    v_stop_nll: float = _help("Stop once the target's mean NLL is below this (with v_stop_prob 0).", 0.05)
    v_stop_prob: float = _help("Stop once every prompt gives the target this length-normalised probability at "
                               "the last layer (the layers below share the change, so it aims higher than "
                               "ROME's single write).", 0.9)
    kl_factor: float = _help("Weight of the KL 'essence' term (v_solver adam).", 0.0625)
    v_weight_decay: float = _help("L2 penalty on the target's change (v_solver adam).", 1e-3)
    clamp_norm_factor: float = _help("Clamp the target's change to this multiple of the output's norm.", 4.0)
    seed: int = _help("Seed of the context-prefix sampling.", 0)
    precision: str = _help("Target optimisation precision: float32 or bfloat16.", "float32")
    phrasings: int = _help("Other phrasings of each fact's relation optimised with its prompt.", 3)
    phrasing_prefixes: int = _help("Context prefixes each phrasing is read under besides its bare wording.", 0)
    phrasing_stop: bool = _help("The phrasings count in the stopping rule.", True)
    v_solver: str = _help("'min_norm' (the smallest change meeting the bar) or 'adam'.", "min_norm")
    v_passes: int = _help("With min_norm, the most passes.", 20)
    v_margin: float = _help("With min_norm, the margin (nats) each step aims above the bar.", 0.1)
    v_radius: float = _help("With min_norm, the first step's trust region (multiple of the output's norm).", 0.5)
    cov_reg: float = _help("Ridge added to each layer's key second moment, relative to its mean eigenvalue.", 1e-2)
    corpus_tokens: int = _help("Corpus tokens used for the key statistics.", 100_000)

    def __post_init__(self) -> None:
        layers = self.layers
        if isinstance(layers, str):  # --param layers=4,5,6
            try:
                layers = tuple(int(x) for x in layers.replace(" ", "").split(",") if x)
            except ValueError:
                raise InvalidInputError(f"MEMIT layers '{self.layers}' are not integers.",
                                        hint="Pass layers as a list: --param layers=[4,5,6].") from None
        if isinstance(layers, int):
            layers = (layers,)
        if layers is not None:
            layers = tuple(int(x) for x in layers)
            if not layers or any(x < 0 for x in layers) or len(set(layers)) != len(layers):
                raise InvalidInputError(f"MEMIT layers {list(layers)} must be distinct layers >= 0.",
                                        hint="Pass layers as a list: --param layers=[4,5,6].")
            object.__setattr__(self, "layers", tuple(sorted(layers)))
        if self.span <= 0 or self.mom2_weight <= 0 or self.protect_facts < 0 or self.corpus_rank < 0:
            raise InvalidInputError("MEMIT parameters span and mom2_weight must be positive, protect_facts and "
                                    "corpus_rank >= 0.")
        try:  # the target optimisation's fields are ROME's, checked by ROME's own rules
            self.value_params(0)
        except InvalidInputError as exc:
            raise InvalidInputError(f"MEMIT's target optimisation: {exc}") from None

    def edit_layers(self, default_layer: int) -> tuple[int, ...]:
        """The layers edited: ``layers``, else the ``span`` layers ending at ``default_layer``."""
        if self.layers is not None:
            return self.layers
        return tuple(range(max(0, default_layer - self.span + 1), default_layer + 1))

    def value_params(self, layer: int) -> RomeParams:
        """ROME's parameters for the target optimisation at ``layer`` (δ at the subject's last token)."""
        shared = {name: getattr(self, name) for name in VALUE_FIELDS}
        return RomeParams(layer=layer, through_weight=False, keep_active=False, **shared)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


#: Per-family overrides of the defaults above: ROME's, for the fields the target optimisation shares.
FAMILY_DEFAULTS: dict[str, dict[str, Any]] = {
    family: {k: v for k, v in values.items() if k in VALUE_FIELDS} for family, values in ROME_DEFAULTS.items()
}
