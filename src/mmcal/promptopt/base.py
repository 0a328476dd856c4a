"""What every paraphraser shares: the interface, the generated-candidate record, the errors,
and the instruction given to language-model paraphrasers."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

from mmcal.errors import MmcalError
from mmcal.promptopt.text import CLEANING_VERSION, fingerprint


class ParaphraserError(MmcalError):
    """A paraphraser could not run (model missing, endpoint unreachable, bad reply)."""


@dataclass(frozen=True)
class Generated:
    """One proposed candidate. ``text`` is None when no valid new candidate could be made."""

    text: str | None
    source: str


# Few-shot examples steer a small model towards one short line; they avoid the default seeds so
# the model is not shown a ready-made answer.
PARAPHRASE_SYSTEM = "You rewrite short sentence starts. Reply with the rewritten text only."
PARAPHRASE_INSTRUCTION = 'Paraphrase the following sentence start, use different words and keep it short: "{text}"'
PARAPHRASE_SHOTS = (
    ("The correct option is", "The right choice is"),
    ("I believe the answer is", "I think the answer is"),
)


def paraphrase_messages(parent: str) -> list[dict]:
    """Chat messages asking for one paraphrase of ``parent`` (string content, any chat template)."""
    messages = [{"role": "system", "content": PARAPHRASE_SYSTEM}]
    for source, target in PARAPHRASE_SHOTS:
        messages.append({"role": "user", "content": PARAPHRASE_INSTRUCTION.format(text=source)})
        messages.append({"role": "assistant", "content": target})
    messages.append({"role": "user", "content": PARAPHRASE_INSTRUCTION.format(text=parent)})
    return messages


def instruction_settings() -> dict:
    """The instruction as fingerprint material: editing it invalidates cached LM outputs."""
    return {
        "system": PARAPHRASE_SYSTEM,
        "instruction": PARAPHRASE_INSTRUCTION,
        "shots": [list(s) for s in PARAPHRASE_SHOTS],
    }


class Paraphraser(ABC):
    """Proposes one raw paraphrase per call; validation, retries and fallback live in the driver
    (:func:`mmcal.promptopt.paraphrasers.propose_paraphrases`)."""

    kind: str = ""
    # Samples tried per candidate before falling back to the rule mutator.
    max_attempts: int = 3

    @abstractmethod
    def settings(self) -> dict:
        """Everything that determines the outputs (never secrets or endpoint locations)."""

    @abstractmethod
    def sample(self, parent: str, sample_seed: int) -> str | None:
        """One raw paraphrase of ``parent``, reproducible for a given ``sample_seed``."""

    def fingerprint(self) -> str:
        from mmcal.promptopt.rule import rule_table_fingerprint  # the fallback's table shapes outputs too

        return fingerprint(
            {
                "kind": self.kind,
                "settings": self.settings(),
                "max_attempts": self.max_attempts,
                "cleaning": CLEANING_VERSION,
                "rules": rule_table_fingerprint(),
            }
        )

    def close(self) -> None:  # noqa: B027 - an optional hook: most paraphrasers hold nothing to release
        """Release heavy resources (a loaded model); the paraphraser stays usable."""
