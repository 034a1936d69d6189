"""Prompt templates of the diffusion generators: attribute lists drawn per sample, class
phrases and counts ("a fire truck and two bicycles"), and the token weights that turn a class's
words into an attention query.

Templates are `{name}` fields: `{class}` in object prompts, `{objects}` in scene prompts, and any
attribute (`{colour}`, `{viewpoint}`, `{weather}`, `{time_of_day}`, `{place}`, or the spec's own).
Pure Python + numpy: no torch.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from synthvision.errors import SpecError
from synthvision.labelers import attention as attn_labels

DEFAULT_ATTRIBUTES: dict[str, list[str]] = {
    "colour": ["red", "blue", "green", "yellow", "white", "black", "silver", "orange"],
    "viewpoint": ["front view", "side view", "three-quarter view", "view from above"],
    "weather": ["sunny", "rainy", "foggy", "snowy", "overcast"],
    "time_of_day": ["at noon", "at dusk", "at night", "in the morning"],
    "place": ["city street", "parking lot", "country road", "park", "living room", "warehouse"],
}


_NUMBER_WORDS = ["no", "a", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]


def class_phrase(name: str) -> str:
    """The words a prompt uses for a class name ("fire_truck" -> "fire truck")."""
    return name.replace("_", " ").strip()


def plural(phrase: str) -> str:
    """Naive English plural of a phrase's last word."""
    if phrase.endswith(("s", "x", "z", "ch", "sh")):
        return phrase + "es"
    if len(phrase) > 1 and phrase.endswith("y") and phrase[-2] not in "aeiou":
        return phrase[:-1] + "ies"
    return phrase + "s"


def count_phrase(n: int, phrase: str) -> str:
    word = _NUMBER_WORDS[n] if n < len(_NUMBER_WORDS) else str(n)
    if n == 1 and phrase[:1].lower() in "aeiou":
        word = "an"
    return f"{word} {phrase if n == 1 else plural(phrase)}"


def objects_text(class_ids: Sequence[int], phrases: Sequence[str]) -> str:
    """ "a fire truck, two bicycles and a dog" from class ids in plan order."""
    order: list[int] = []
    for c in class_ids:
        if c not in order:
            order.append(c)
    parts = [count_phrase(list(class_ids).count(c), phrases[c]) for c in order]
    if not parts:
        return "nothing"
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def template_fields(template: str, where: str) -> list[str]:
    """Field names of a `{name}` template; SpecError on malformed templates."""
    try:
        names = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as exc:
        raise SpecError(f"{where}: bad prompt template {template!r}: {exc}") from None
    for f in names:
        if not f.isidentifier():
            raise SpecError(f"{where}: template field {{{f}}} must be a plain name like {{colour}}")
    return names


def check_template(template: str, allowed: set[str], where: str) -> None:
    unknown = sorted(set(template_fields(template, where)) - allowed)
    if unknown:
        raise SpecError(
            f"{where}: unknown template field(s) {', '.join('{' + u + '}' for u in unknown)}; "
            f"known: {', '.join('{' + a + '}' for a in sorted(allowed))} (add lists under "
            "attributes to define more)"
        )


def draw_attributes(
    template: str, attributes: Mapping[str, Sequence[str]], rng: np.random.Generator
) -> dict[str, str]:
    """One value per attribute field used in `template`, drawn in sorted field order."""
    used = sorted({f for f in template_fields(template, "prompt") if f in attributes})
    return {name: str(attributes[name][int(rng.integers(len(attributes[name])))]) for name in used}


def render(template: str, values: Mapping[str, str]) -> str:
    text = template.format_map(dict(values))
    return re.sub(r"\s+", " ", text).strip()


def phrase_spans(prompt: str, phrases: Sequence[str]) -> list[list[tuple[int, int]]]:
    """Character spans of each phrase (singular or plural, whole words, any case) in `prompt`.

    Longer phrases claim their characters first, so "truck" does not match inside "fire truck"
    when both are classes.
    """
    claimed = np.zeros(len(prompt) + 1, dtype=bool)
    spans: list[list[tuple[int, int]]] = [[] for _ in phrases]
    for q in sorted(range(len(phrases)), key=lambda i: -len(phrases[i])):
        p = phrases[q]
        forms = sorted({p, plural(p)}, key=len, reverse=True)
        pattern = r"(?<![\w])(?:" + "|".join(re.escape(f) for f in forms) + r")(?![\w])"
        for m in re.finditer(pattern, prompt, flags=re.IGNORECASE):
            if not claimed[m.start() : m.end()].any():
                claimed[m.start() : m.end()] = True
                spans[q].append((m.start(), m.end()))
    return spans


def query_weights(
    tokenizer: Any, prompt: str, spans: Sequence[Sequence[tuple[int, int]]]
) -> tuple[npt.NDArray[np.float32], list[list[int]]]:
    """Attention-query weights (Q, T) for character spans per query, and the token positions."""
    tokens = [
        sorted({t for a, b in q_spans for t in attn_labels.token_span(tokenizer, prompt, a, b)})
        for q_spans in spans
    ]
    num_tokens = int(getattr(tokenizer, "model_max_length", 77))
    return attn_labels.token_weights(tokens, num_tokens), tokens
