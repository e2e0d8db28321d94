"""Pulling the graded part out of a completion: <answer>, the last \\boxed{}, a code block."""

from __future__ import annotations

import re

from reasonrl.tasks.base import last_boxed

_ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_FENCE_RE = re.compile(r"```[ \t]*([\w+-]*)[ \t]*\n(.*?)```", re.DOTALL)


def extract_answer(completion: str) -> str | None:
    """The text of the only <answer>…</answer> pair, stripped; None if there is not exactly one."""
    found = _ANSWER_RE.findall(completion)
    return found[0].strip() if len(found) == 1 else None


def math_answer(completion: str) -> str | None:
    """The answer of a math completion: the <answer> tag if there is exactly one, else the last
    ``\\boxed{}``."""
    answer = extract_answer(completion)
    return answer if answer is not None else last_boxed(completion)


def last_code_block(text: str) -> str | None:
    """The body of the last fenced code block whose language is python, py or unset."""
    blocks = [
        body
        for lang, body in _FENCE_RE.findall(text)
        if lang.lower() in ("", "python", "python3", "py")
    ]
    return blocks[-1] if blocks else None
