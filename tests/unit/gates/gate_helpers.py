"""Hand-made deltas for the gate tests: a rank-one write at the last layer that makes a target certain."""

from __future__ import annotations

from cathrepo.facts.probes import Probe, ProbeSet
from cathrepo.facts.schema import Fact, Neighbor

FACT = Fact(
    prompt="The Eiffel Tower is located in the city of",
    subject="The Eiffel Tower",
    target_new="Rome",
    target_true="Paris",
    paraphrases=("Where is The Eiffel Tower? It is located in",),
    neighborhood=(Neighbor("Steve Jobs founded Apple in", "California"),),
)
OTHER = Fact(prompt="The mother tongue of Danielle Darrieux is", subject="Danielle Darrieux",
             target_new="German", target_true="French")


def oracle_delta(model, tokenizer, prompt: str, new: str, old: str, strength: float = 200.0):
    """ΔW = c·û kᵀ/|k|² on the last MLP output projection: at ``prompt``'s last token the residual gains
    c·û, with û the unembedding direction new − old, so ``new`` wins there by a wide margin."""
    import torch

    from cathrepo.delta import Delta, LowRank
    from cathrepo.lm.hooks import forward_until
    from cathrepo.lm.tokens import first_token_id
    from cathrepo.models import family_for, num_layers

    name = family_for(model).layer_name("mlp_out", num_layers(model) - 1)
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        key = forward_until(model, name, inputs=True, input_ids=ids)[0, -1].float()  # (d_in,)
    unembed = model.get_output_embeddings().weight.detach().float()  # (vocab, d_model)
    u = unembed[first_token_id(tokenizer, new)] - unembed[first_token_id(tokenizer, old)]
    if float(u.norm()) == 0.0:  # both start with the same token (a bare space in the tiny tokenizer)
        u = unembed[first_token_id(tokenizer, new)]
    B = (strength * u / u.norm())[:, None]  # (d_model, 1)
    A = (key / key.norm() ** 2)[None, :]  # (1, d_in)
    return Delta({name: LowRank(B, A)})


def probes_for(fact: Fact) -> ProbeSet:
    probes = [Probe("rewrite", fact.prompt, fact.target_new, fact.target_true, "record")]
    probes += [Probe("paraphrase", p, fact.target_new, fact.target_true, "record") for p in fact.paraphrases]
    probes += [Probe("neighborhood", n.prompt, n.answer, fact.target_new, "record") for n in fact.neighborhood]
    probes += [Probe("generation", fact.prompt, fact.target_new, None, "record")]
    return ProbeSet(tuple(probes), fact.subject)
