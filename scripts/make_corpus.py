"""Write the default covariance corpus: text sampled from the embedded model across diverse openings.

ROME's reference code estimates the key covariance from Wikipedia, which is not reachable offline.
Text sampled from the base model itself is a faithful sample of the activations the edit layer sees
(ENVIRONMENT.md); this script produced cathrepo/data/corpus/smollm2-samples.txt once. Re-running it
with the same seed, model and library versions reproduces the file.

    .venv/bin/python scripts/make_corpus.py --out cathrepo/data/corpus/smollm2-samples.txt
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import torch

from cathrepo.models import load_model, resolve_model

TOPICS = [
    "history", "physics", "biology", "chemistry", "geography", "music", "football", "cooking", "economics",
    "law", "medicine", "painting", "literature", "astronomy", "computer science", "politics", "religion",
    "film", "architecture", "mathematics", "philosophy", "language", "travel", "business", "television",
    "the ocean", "farming", "aviation", "the Roman Empire", "a famous scientist", "a city in Asia",
    "a river in Africa", "a European country", "an American company", "a video game", "a rock band",
    "an Olympic sport", "a novel", "a mountain", "a university", "the weather", "a car manufacturer",
]
OPENINGS = [
    "Write an encyclopedia paragraph about {}.",
    "Here is a short news report about {}:",
    "Explain {} to a student.",
    "The following text describes {}.",
    "A brief history of {}:",
    "Facts about {}:",
]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--tokens", type=int, default=192)
    parser.add_argument("--batch", type=int, default=24)
    parser.add_argument("--seed", type=int, default=1234)
    args = parser.parse_args()
    model, tok = load_model(resolve_model(None).path, device="cpu")
    tok.padding_side = "left"
    prompts = [o.format(t) for t, o in itertools.product(TOPICS, OPENINGS)]
    torch.manual_seed(args.seed)
    texts = []
    for start in range(0, len(prompts), args.batch):
        chunk = prompts[start : start + args.batch]
        enc = tok(chunk, return_tensors="pt", padding=True)
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=args.tokens, do_sample=True, top_p=0.95,
                                 temperature=1.0, pad_token_id=tok.pad_token_id)
        for row in out[:, enc["input_ids"].shape[1]:]:
            text = " ".join(tok.decode(row, skip_special_tokens=True).split())
            if len(text) > 80:
                texts.append(text)
        print(f"{start + len(chunk)}/{len(prompts)}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(texts) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
