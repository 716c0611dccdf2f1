"""Scoring generated completions against reference answers, and binomial intervals for accuracies.

Tasks (`parse_task`), each giving one or more named metrics per completion (True/False):

- `gsm8k`: the final number of the answer. `strict`: the number after the last `####` of the completion
  (lm-eval's gsm8k strict match); `flexible`: the last number anywhere in it. The reference is the number
  after `####` of the answer when it has one, else its last number. Numbers compare after removing `,` and
  `$`, a trailing `.`, and trailing zeros of a decimal part (`1,000.50` = `1000.5`; `7.0` = `7`).
- `exact`: the whole completion equals the whole answer after whitespace normalisation (strip, and every run
  of whitespace becomes one space).
- `contains`: the normalised answer occurs in the normalised completion.
- `regex:PATTERN`: `re.search(PATTERN, completion)` succeeds; with a group, the first group must equal the
  normalised answer instead.

Accuracy intervals are Wilson score intervals at 95% (`headattr.stats.intervals.wilson_interval`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from headattr.errors import HeadattrError
from headattr.stats.intervals import wilson_interval

TASK_NAMES = ("gsm8k", "exact", "contains", "regex:PATTERN")
_NUMBER = re.compile(r"-?[$0-9][0-9,]*(?:\.[0-9]+)?")


@dataclass(frozen=True)
class Task:
    """A scoring rule: `name` as given on the command line, `metrics` it reports (the first is the primary)."""

    name: str
    metrics: tuple[str, ...]
    pattern: re.Pattern[str] | None = None

    def score(self, completion: str, answer: str) -> dict[str, bool]:
        """Whether `completion` is correct for `answer`, per metric."""
        if self.name == "gsm8k":
            gold = gsm8k_reference(answer)
            return {
                "strict": gold is not None and gsm8k_strict(completion) == gold,
                "flexible": gold is not None and last_number(completion) == gold,
            }
        if self.name == "exact":
            return {"exact": normalise(completion) == normalise(answer)}
        if self.name == "contains":
            return {"contains": normalise(answer) in normalise(completion)}
        found = self.pattern.search(completion)
        if found is None:
            return {"regex": False}
        if self.pattern.groups:
            return {"regex": normalise(found.group(1) or "") == normalise(answer)}
        return {"regex": True}


def parse_task(text: str) -> Task:
    """`gsm8k`, `exact`, `contains` or `regex:PATTERN` as a `Task`; anything else is a one-line error."""
    if text == "gsm8k":
        return Task("gsm8k", ("strict", "flexible"))
    if text in ("exact", "contains"):
        return Task(text, (text,))
    if text.startswith("regex:") and len(text) > len("regex:"):
        try:
            return Task(text, ("regex",), re.compile(text[len("regex:") :]))
        except re.error as exc:
            raise HeadattrError(f"--task {text!r}: invalid regular expression ({exc})") from None
    raise HeadattrError(f"unknown --task {text!r}; choose one of {', '.join(TASK_NAMES)}")


def normalise(text: str) -> str:
    """Strip, and collapse every run of whitespace to one space."""
    return " ".join(text.split())


def _canonical_number(raw: str) -> str:
    number = raw.replace(",", "").replace("$", "").rstrip(".")
    if "." in number:
        number = number.rstrip("0").rstrip(".")
    return "0" if number in ("-0", "") else number


def last_number(text: str) -> str | None:
    """The last number in `text`, canonical (see the module docstring); None if there is none."""
    found = [m for m in _NUMBER.findall(text) if any(c.isdigit() for c in m)]
    return _canonical_number(found[-1]) if found else None


def gsm8k_strict(text: str) -> str | None:
    """The number right after the last `####` of `text` (canonical), or None."""
    marks = list(re.finditer(r"####\s*(-?[$0-9.,]+)", text))
    return _canonical_number(marks[-1].group(1)) if marks else None


def gsm8k_reference(answer: str) -> str | None:
    """The reference number of a GSM8K answer: after `####` if present, else the last number."""
    return gsm8k_strict(answer) or last_number(answer)


def accuracy(correct: Sequence[bool]) -> dict[str, float | int]:
    """Accuracy of a list of outcomes with its 95% Wilson interval and counts."""
    k, n = int(sum(bool(c) for c in correct)), len(correct)
    low, high = wilson_interval(k, n)
    return {"accuracy": k / n if n else float("nan"), "low": low, "high": high, "correct": k, "n": n}
