"""The released IDK format: LLaVA-style conversation JSON (builder ``llava_json``)."""

from __future__ import annotations

import os
import re
from pathlib import Path

from mmcal import LETTERS
from mmcal.data.idk.common import (
    IDK_TEXT,
    MAX_REJECTED,
    RejectedRecord,
    assign_calib_test,
    check_unique_ids,
    is_idk_text,
    missing_image_report,
    norm_text,
    read_json,
    record_where,
    require_unknowable,
    screen_records,
)
from mmcal.data.registry import BuildContext, register, require
from mmcal.errors import ConfigError, DataError
from mmcal.items import MCItem

# One option at the start of a line: "A. x", "A) x", "A: x" or "(A) x".
_OPTION_LINE = re.compile(r"^\s*(?:\(([A-J])\)|([A-J])[.):])\s*(.*?)\s*$")
# The answer turn: "A", "(A)", "A.", "A) text", "A. text".
_ANSWER = re.compile(r"^\s*\(?\s*([A-J])\s*(?:\)|\.|:|$|\s)")


def parse_mc_prompt(text: str, where: str) -> tuple[str, list[str], str]:
    """Split a human turn into (question, options, trailing instruction); '<image>' is dropped."""
    text = text.replace("<image>", "").strip()
    lines = text.splitlines()
    question_lines, options, trailer_lines = [], [], []
    for line in lines:
        m = _OPTION_LINE.match(line)
        letter = (m.group(1) or m.group(2)) if m else None
        expected = LETTERS[len(options)] if len(options) < len(LETTERS) else None
        if letter is not None and letter == expected and not trailer_lines:
            options.append(m.group(3))
        elif options:
            if line.strip():
                trailer_lines.append(line.strip())
        elif line.strip():
            question_lines.append(line.strip())
    if not options:  # all on one line: "Question? A. x B. y C. z"
        question, options, trailer = _parse_inline_options(" ".join(question_lines))
        question_lines, trailer_lines = [question], [trailer] if trailer else []
    if len(options) < 2:
        raise DataError(f"{where}: found {len(options)} lettered options ('A. x', 'A) x' or '(A) x'), need at least 2")
    if any(not o for o in options):
        raise DataError(f"{where}: option {LETTERS[options.index('')]} has no text")
    question = " ".join(question_lines).strip()
    if not question:
        raise DataError(f"{where}: no question text before the options")
    return question, options, " ".join(trailer_lines)


def _parse_inline_options(text: str) -> tuple[str, list[str], str]:
    """Options written inline; letters must follow each other from A."""
    marks = []
    pos = 0
    for letter in LETTERS:
        m = re.compile(rf"(?:^|\s)(?:\({letter}\)|{letter}[.)])\s+").search(text, pos)
        if not m:
            break
        marks.append(m)
        pos = m.end()
    if len(marks) < 2:
        return text, [], ""
    options = [text[a.end() : b.start()].strip() for a, b in zip(marks, marks[1:])]
    options.append(text[marks[-1].end() :].strip())
    return text[: marks[0].start()].strip(), options, ""


def parse_answer(value: str, options: list[str], where: str) -> int:
    """Gold index from the answer turn: an option's full text, or its letter."""
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{where}: empty answer turn")
    norm = norm_text(value)
    for i, opt in enumerate(options):  # text first: "I don't know" must not read as letter I
        if norm_text(opt) == norm:
            return i
    m = _ANSWER.match(value)
    if m is None:
        raise DataError(f"{where}: answer {value!r} is neither an option letter nor an option text")
    index = LETTERS.index(m.group(1))
    if index >= len(options):
        raise DataError(
            f"{where}: answer letter {m.group(1)} but only {len(options)} options (A-{LETTERS[len(options) - 1]})"
        )
    return index


# How the gold letter is read from the answer turn (``answer:``), per release:
#   auto        the turn is an option's text or a letter ("A", "(A)", "A.", "A) text"), as LLaVA-style files write it
#   letter      the turn is exactly one letter, as the reference's TS.py compares it (``answer == decoded letter``)
#   first_char  the turn's first character is the letter, as the reference's PT.py reads it (``answer[0]``)
ANSWER_RULES = ("auto", "letter", "first_char")


def _turn_index(conv: list, roles: tuple[str, ...], start: int = 0) -> int | None:
    for i in range(start, len(conv)):
        if isinstance(conv[i], dict) and conv[i].get("from") in roles:
            return i
    return None


def _conversation_turns(rec: dict, where: str) -> tuple[str, str]:
    """(question text, answer text). With roles (``from``): the first human turn and the first answer turn
    after it. Without any role: the first two turns, by position, as the reference's TS.py/PT.py read
    ``conversations[0]['value']`` and ``conversations[1]['value']``."""
    conv = rec.get("conversations")
    if not isinstance(conv, list) or not conv:
        raise DataError(f"{where}: 'conversations' must be a non-empty list of turns")
    if not all(isinstance(turn, dict) for turn in conv):
        raise DataError(f"{where}: every turn of 'conversations' must be an object with a 'value'")
    if any("from" in turn for turn in conv):
        human = _turn_index(conv, ("human", "user"))
        if human is None:
            raise DataError(f"{where}: no turn with from='human'")
        answer = _turn_index(conv, ("gpt", "assistant"), start=human + 1)
        if answer is None:
            raise DataError(f"{where}: no answer turn (from='gpt') after the question")
    else:
        if len(conv) < 2:
            raise DataError(f"{where}: no answer turn (turns have no 'from' roles, so the second turn is the answer)")
        human, answer = 0, 1
    value = conv[human].get("value")
    if not isinstance(value, str):
        raise DataError(f"{where}: the human turn has no text 'value'")
    return value, conv[answer].get("value")


def gold_from_answer(value, options: list[str], where: str, rule: str = "auto") -> int:
    """The gold index from the answer turn under a release's ``answer`` rule (:data:`ANSWER_RULES`)."""
    if rule == "auto":
        return parse_answer(value, options, where)
    if not isinstance(value, str) or not value:
        raise DataError(f"{where}: empty answer turn")
    letter = value if rule == "letter" else value[0]
    if letter not in LETTERS:
        shown = "the answer turn" if rule == "letter" else "the answer turn's first character"
        raise DataError(f"{where}: {shown} {letter!r} is not an option letter (answer: {rule})")
    index = LETTERS.index(letter)
    if index >= len(options):
        raise DataError(
            f"{where}: answer letter {letter} but only {len(options)} options (A-{LETTERS[len(options) - 1]})"
        )
    return index


def parse_llava_record(
    rec,
    index: int,
    path: Path,
    image_root: Path | None,
    idk_text: str,
    gold_mode: str,
    check_images: bool,
    answer_rule: str = "auto",
) -> dict:
    """Fields of one conversation record; a problem raises RejectedRecord naming the record."""
    rid = rec.get("id") if isinstance(rec, dict) else None
    where = record_where(f"{path}: record", index, rid)
    try:
        fields = _llava_fields(rec, where, image_root, idk_text, gold_mode, check_images, answer_rule)
    except DataError as exc:
        raise RejectedRecord.from_error(exc, where, index, rid) from None
    # the reference reads records by position and never their id: a record without one is known by its index
    record_id = f"record{index}" if rid in (None, "") else str(rid)
    return {"index": index, "id": record_id, **fields}


def _llava_fields(rec, where: str, image_root, idk_text: str, gold_mode: str, check_images: bool, answer_rule) -> dict:
    if not isinstance(rec, dict):
        raise DataError(f"{where}: expected an object, got {type(rec).__name__}")
    image = rec.get("image")
    if not isinstance(image, str) or not image.strip():
        raise DataError(f"{where}: missing 'image'")
    img_path = Path(image) if image_root is None else Path(image_root) / image
    # a named image that is not there: the item stays, unscorable (scoring's "image missing")
    missing = str(img_path) if check_images and not img_path.is_file() else None
    human, answer = _conversation_turns(rec, where)
    question, options, instruction = parse_mc_prompt(human, where)
    file_gold = gold_from_answer(answer, options, where, answer_rule)
    idk = [i for i, o in enumerate(options) if is_idk_text(o, idk_text)]
    if len(idk) > 1:
        raise DataError(f"{where}: several IDK options {[LETTERS[i] for i in idk]}")
    idk_index = idk[0] if idk else None
    if gold_mode == "idk" and idk_index is None:
        raise DataError(f"{where}: gold='idk' but no option reads like {idk_text!r}")
    gold = idk_index if gold_mode == "idk" else file_gold
    return {
        "image": image,
        "question": question,
        "options": options,
        "gold": gold,
        "file_gold": file_gold,
        "idk_index": idk_index,
        "instruction": instruction,
        "human_turn": human,
        "image_missing": missing,
    }


def read_llava_conversation_json(
    path: str | Path,
    image_root: str | Path | None,
    dataset: str,
    split: str = "test",
    idk_text: str = IDK_TEXT,
    image_rel: str = "",
    gold: str = "file",
    calib_fraction: float | None = None,
    seed: int = 0,
    check_images: bool = True,
    strict: bool = False,
    max_rejected: float = MAX_REJECTED,
    answer: str = "auto",
) -> tuple[list[MCItem], dict]:
    """Items from a LLaVA-style conversation JSON file (the released IDK format).

    Each record: ``{"id", "image", "conversations": [{"from": "human", "value": "<image>\\n
    Question\\nA. ...\\nB. ..."}, {"from": "gpt", "value": "A"}]}``. ``id`` is optional (a record without
    one is ``record<index>``) and so are the ``from`` roles (then the first turn is the question and the
    second the answer, as the reference's scripts read them). ``answer`` says how the gold letter is read
    from the answer turn (:data:`ANSWER_RULES`). The question turn is kept as it is in the file
    (``metadata['human_turn']``) for prompts with ``question: verbatim``. Options may be written
    ``A. x``, ``A) x``, ``A: x`` or ``(A) x`` (one per line, or inline). The IDK option is found by
    text (``idk_text`` or "I don't know"/"I do not know", any case) and stored as
    ``metadata['idk_index']``. ``gold="file"`` keeps the file's answer; ``gold="idk"`` makes the IDK
    option the gold (the reference study's reading of after-cutoff questions) and keeps the file's
    answer as ``metadata['file_answer_index']``. With ``calib_fraction`` the items are split into
    calib/test by image; otherwise all get ``split``.

    A record whose image file is not under ``image_root`` stays an item, marked
    ``metadata['unscorable']`` (scoring records it as "image missing") and listed in the report's
    ``missing_images``; the build fails only when no image is found at all (a wrong ``image_root``).

    A malformed record is rejected, not fatal (``mmcal.data.idk.common.screen_records``: the build
    fails with ``strict`` or above ``max_rejected``); the returned report lists the rejected records.
    """
    if gold not in ("file", "idk"):
        raise ConfigError(f"gold must be 'file' or 'idk', not {gold!r}")
    if answer not in ANSWER_RULES:
        raise ConfigError(f"answer must be one of {', '.join(ANSWER_RULES)}, not {answer!r}")
    path = Path(path)
    if not path.is_file():
        raise DataError(f"IDK conversation file {path} does not exist")
    data = read_json(path)
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    root = None if image_root is None else Path(image_root)
    parsed, report = screen_records(
        data,
        lambda rec, i: parse_llava_record(rec, i, path, root, idk_text, gold, check_images, answer),
        str(path),
        strict=strict,
        max_rejected=max_rejected,
    )
    check_unique_ids([p["id"] for p in parsed], str(path))
    report.update(missing_image_report(parsed, path))
    items = [_llava_item(p, dataset, split, image_rel, idk_text, path) for p in parsed]
    if calib_fraction is not None:
        assign_calib_test(items, calib_fraction, seed)
    for it in items:
        it.validate(f"{path}: ")
    return items, report


def _llava_item(p: dict, dataset, split, image_rel, idk_text, path: Path) -> MCItem:
    unknowable = p["idk_index"] is not None and p["gold"] == p["idk_index"]
    unscorable = {"unscorable": f"image missing: {p['image_missing']}"} if p["image_missing"] else {}
    return MCItem(
        item_id=f"{dataset}-{p['id']}",
        cluster_id=f"{dataset}:{p['image']}",  # items sharing an image share a cluster
        question=p["question"],
        options=p["options"],
        gold=p["gold"],
        split=split,
        source=f"{path.name}#{p['id']}",
        image=f"{image_rel}/{p['image']}" if image_rel else p["image"],
        metadata={
            "kind": "unknowable" if unknowable else "answerable",
            "answerable": not unknowable,
            "idk_index": p["idk_index"],
            "idk_text": idk_text,
            "file_answer_index": p["file_gold"],
            "instruction": p["instruction"],
            "human_turn": p["human_turn"],
            "record_id": p["id"],
            **unscorable,
        },
    )


@register("llava_json")
def build_llava_json(name: str, cfg: dict, out_dir: Path, context: BuildContext) -> tuple[list[MCItem], dict]:
    """Config adapter: ``path``, ``image_root`` (default: the file's folder), ``split``, ``calib_fraction``,
    ``gold`` (``file``: the release's answer is the gold, ``idk``: the IDK option is), ``answer`` (how the
    answer turn names the gold: :data:`ANSWER_RULES`), ``strict``, ``max_rejected``. A set with no unknowable
    item (a release that stores the true answers, read with ``gold: file``) is an error naming the file."""
    path = require(cfg, "path", name)
    image_root = cfg.get("image_root", str(Path(path).parent))
    items, report = read_llava_conversation_json(
        path,
        image_root,
        dataset=name,
        split=cfg.get("split", "test"),
        idk_text=cfg.get("idk_text", IDK_TEXT),
        image_rel=os.path.relpath(image_root, out_dir),
        gold=cfg.get("gold", "file"),
        calib_fraction=cfg.get("calib_fraction"),
        seed=context.seed,
        strict=bool(cfg.get("strict", False)),
        max_rejected=float(cfg.get("max_rejected", MAX_REJECTED)),
        answer=cfg.get("answer", "auto"),
    )
    require_unknowable(items, name, "llava_json", path)
    return items, report
