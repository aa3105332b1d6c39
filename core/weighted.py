"""Weighted lists typed as text: the prompt blend and the seed blend settings. Pure Python (no torch):
`StreamConfig` and the app's settings schema (plugin/schema.py) both check with these, so a bad
list gets the same one-line error on every surface.

- prompt blend: "prompt A : 0.7 | prompt B : 0.3"  items split by "|"; the weight is the number
  after an item's LAST ":" (so a prompt may itself hold colons: "style: ink : 0.5"); an item whose
  text after the last ":" is not a number (and does not start like one) is all prompt, weight 1.
- seed blend: "2:0.6, 7:0.4"  items split by ","; "seed" or "seed:weight" (weight 1 when left out).
- both: "" (or only spaces) = off; at most MAX_BLEND_ITEMS items; weights finite and >= 0 with a
  sum above 0 (they are normalised when blended: only their ratios count).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from .limits import MAX_BLEND_ITEMS, RANGES, shown

_NUMBER_START = tuple("+-.0123456789")


def weights_problem(weights: Sequence[float]) -> str | None:
    """None when the weights can be blended, else why not (without a field name)."""
    if not weights:
        return "the list is empty; give at least one item with a weight above 0"
    if any(not math.isfinite(w) or w < 0 for w in weights):
        return f"every weight must be a finite number >= 0, got {list(weights)}"
    if sum(weights) <= 0:
        return "the weights add up to 0; give at least one weight above 0"
    return None


class _Bad(Exception):
    """One item's problem (the message), turned into the field's error by `WeightedList.problem`."""


def _weight(text: str, item: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise _Bad(f"the weight of {shown(item)} is not a number: {shown(text)}") from None
    return value


def _prompt_item(item: str) -> tuple[str, float]:
    head, colon, tail = item.rpartition(":")
    tail = tail.strip()
    if not colon:
        prompt, weight = item, 1.0
    elif not tail:
        raise _Bad(f"{shown(item)} has no weight after ':' (write 'prompt : 0.5', or leave out the ':')")
    elif tail.startswith(_NUMBER_START):
        prompt, weight = head, _weight(tail, item)
    else:  # "style: ink": a colon inside the prompt
        prompt, weight = item, 1.0
    prompt = prompt.strip()
    if not prompt:
        raise _Bad(f"{shown(item)} has no prompt before the weight")
    return prompt, weight


def _seed_item(item: str) -> tuple[int, float]:
    head, colon, tail = item.partition(":")
    head = head.strip()
    try:
        seed = int(head)
    except ValueError:
        raise _Bad(f"{shown(item)}: the seed must be a whole number, got {shown(head)}") from None
    problem = RANGES["seed"].problem(seed)
    if problem:
        raise _Bad(f"{shown(item)}: each seed {problem}")
    return seed, _weight(tail.strip(), item) if colon else 1.0


@dataclass(frozen=True)
class WeightedList:
    """The grammar of one weighted-list setting: `separator` between items, `item` reads one."""

    kind: str  # what an item is, for messages: "prompt" | "seed"
    separator: str
    item: Callable[[str], tuple[Any, float]]
    example: str

    def items(self, text: str) -> tuple[tuple[Any, float], ...]:
        """The (item, weight) pairs of `text`; () when off. Raises _Bad on a bad list."""
        if not isinstance(text, str):
            raise _Bad(f"must be text such as {self.example!r}, got {type(text).__name__}")
        if not text.strip():
            return ()
        parts = text.split(self.separator)
        if len(parts) > MAX_BLEND_ITEMS:
            raise _Bad(f"at most {MAX_BLEND_ITEMS} {self.kind}s, got {len(parts)}")
        if any(not p.strip() for p in parts):
            raise _Bad(f"an item between {self.separator!r} separators is empty (example: {self.example!r})")
        pairs = tuple(self.item(p.strip()) for p in parts)
        keys = [k for k, _ in pairs]
        if self.kind == "seed" and len(set(keys)) != len(keys):
            twice = next(k for k in keys if keys.count(k) > 1)
            raise _Bad(f"seed {twice} is listed twice; give each seed once")
        problem = weights_problem([w for _, w in pairs])
        if problem:
            raise _Bad(problem)
        return pairs

    def problem(self, text: Any) -> str | None:
        """None when `text` is a valid list (or off), else the message (without the field name)."""
        try:
            self.items(text)
        except _Bad as exc:
            return str(exc)
        return None

    def parse(self, name: str, text: Any) -> tuple[tuple[Any, float], ...]:
        """The (item, weight) pairs; ValueError("name: ...") for a bad list."""
        try:
            return self.items(text)
        except _Bad as exc:
            raise ValueError(f"{name}: {exc}") from None


PROMPT_BLEND = WeightedList("prompt", "|", _prompt_item, "a cat : 0.7 | a dog : 0.3")
SEED_BLEND = WeightedList("seed", ",", _seed_item, "2:0.6, 7:0.4")
