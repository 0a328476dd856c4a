"""Benchmark: prompt-search candidates scored on each item's shared prefix (KV cache) vs every
candidate scored from scratch.

    python -m mmcal.bench.prefix_reuse --model data/models/tiny-llava-stage2 --items 40 --candidates 20
"""

from __future__ import annotations

import numpy as np

from mmcal.bench.common import parser, setup, timed
from mmcal.engine.prompts import PromptVariant
from mmcal.engine.scenarios import Scenario
from mmcal.engine.scoring import Engine
from mmcal.promptopt.job import answer_prefix_for

WORDS = [
    "The answer might be",
    "The answer must be",
    "The correct option is",
    "I think it is",
    "Most likely it is",
    "The right choice is",
    "My answer is",
    "It should be",
    "The best option is",
    "Probably",
    "Certainly it is",
    "The option is",
    "I would say",
    "Surely the answer is",
    "The likely answer is",
    "One would choose",
    "Clearly it is",
    "The answer is",
    "Perhaps it is",
    "The image shows option",
]


def main(argv=None):
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--candidates", type=int, default=20)
    args = p.parse_args(argv)
    lm, items, root = setup(args)
    prefixes = [answer_prefix_for(w) for w in WORDS[: args.candidates]]
    shared = Engine(lm, PromptVariant(), readouts=["letter_restricted"], batch_size=args.batch_size, image_root=root)
    shared.score_answer_prefixes(items[:2], Scenario(), prefixes[:2])  # warm-up

    def from_scratch():
        return {
            pre: Engine(
                lm,
                PromptVariant(answer_prefix=pre),
                readouts=["letter_restricted"],
                batch_size=args.batch_size,
                image_root=root,
            ).score(items, Scenario())
            for pre in prefixes
        }

    reused, t_shared = timed(lambda: shared.score_answer_prefixes(items, Scenario(), prefixes))
    scratch, t_scratch = timed(from_scratch)
    worst = 0.0
    for pre in prefixes:
        a = {r["item_id"]: r["confidence"] for r in reused[pre]}
        b = {r["item_id"]: r["confidence"] for r in scratch[pre]}
        worst = max(worst, max(abs(a[k] - b[k]) for k in a))
    n = len(items) * len(prefixes)
    where = f"{lm.device}, {lm.model.dtype}" if lm.device != "cpu" else f"CPU, {args.threads} threads"
    print(f"model {lm.name}, {len(items)} items x {len(prefixes)} candidates, {where}, batch {args.batch_size}")
    print(f"shared prefix (KV cache)  {n / t_shared:8.1f} item-candidates/s  ({t_shared:.1f} s)")
    print(f"from scratch              {n / t_scratch:8.1f} item-candidates/s  ({t_scratch:.1f} s)")
    print(f"speed-up {t_scratch / t_shared:.1f}x; max |confidence difference| {worst:.2e}")
    assert np.isfinite(worst)


if __name__ == "__main__":
    main()
