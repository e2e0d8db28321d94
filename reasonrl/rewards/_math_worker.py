"""The process side of the ``math`` verifier: math-verify runs here, in a worker process that
the trainer can kill, never in the trainer itself (sympy evaluates what it parses).

Run as a script (``python -P _math_worker.py MEMORY_MB``): it reads ``[gold, answer]`` JSON
lines on stdin and writes one ``[status, detail]`` JSON line per request, after a first
``["ready", ""]`` line once math-verify is imported.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import sys

from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

_EXTRACT = [LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()]


def compare(gold: str, answer: str) -> tuple[str, str]:
    """Is ``answer`` equivalent to ``gold`` (gold first: math-verify is asymmetric)?
    Returns (status, detail), status in ok | wrong | unparsed | error."""
    gold_parsed = parse(f"\\boxed{{{gold}}}", _EXTRACT, parsing_timeout=None)
    if not gold_parsed:
        return "error", f"the gold answer {gold!r} does not parse"
    parsed = parse(f"\\boxed{{{answer}}}", _EXTRACT, parsing_timeout=None)
    if not parsed:
        return "unparsed", ""
    same = verify(gold_parsed, parsed, timeout_seconds=None)
    return ("ok" if same else "wrong"), str(parsed[0])[:200]


def main() -> None:
    # Deadlines are the parent's job (math-verify's signal.alarm does not stop every hang), so
    # its own timeouts are off, and so is its warning about that.
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    memory = int(sys.argv[1]) << 20
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    replies = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # a stray print must not corrupt the replies
    replies.write('["ready", ""]\n')
    replies.flush()
    for line in sys.stdin:
        gold, answer = json.loads(line)
        try:
            result = compare(gold, answer)
        except Exception as e:  # MemoryError included: report it, stay alive
            result = ("error", f"{type(e).__name__}: {str(e)[:200]}")
        replies.write(json.dumps(result) + "\n")
        replies.flush()


if __name__ == "__main__":
    main()
