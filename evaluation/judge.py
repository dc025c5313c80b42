"""Pairwise LLM judge: which of two answers is better, asked in both orders.

Any OpenAI-compatible chat model can judge. Each pair is asked twice with the answers
swapped, which cancels the judge's preference for a position; an answer the judge does
not state clearly counts as a tie. A candidate's per-example score is the mean of its two
verdicts (win 1, tie 0.5, loss 0), so its win rate against the baseline is 0.5 when they
are indistinguishable.
"""

from __future__ import annotations

import re
from typing import Literal

Verdict = Literal["A", "B", "TIE"]

JUDGE_PROMPT = """You compare two answers to the same request and decide which is better.

Request:
{question}

Reference answer (correct):
{reference}

Answer A:
{answer_a}

Answer B:
{answer_b}

Which answer is closer to the reference and more useful? Reply with exactly one word: A, B, or TIE."""

_VERDICT = re.compile(r"\b(TIE|A|B)\b", re.IGNORECASE)


def judge_messages(question: str, reference: str, answer_a: str, answer_b: str) -> list[dict]:
    """The chat messages sent to the judge for one ordered pair."""
    content = JUDGE_PROMPT.format(
        question=question, reference=reference, answer_a=answer_a, answer_b=answer_b
    )
    return [{"role": "user", "content": content}]


def parse_verdict(text: str) -> Verdict | None:
    """The first clear verdict word in the judge's reply, or None when there is none."""
    match = _VERDICT.search(text or "")
    return match.group(1).upper() if match else None  # type: ignore[return-value]


def candidate_score(first: Verdict | None, second: Verdict | None) -> float:
    """Candidate's score from two verdicts: first asked with the candidate as B, second
    with the candidate as A. Unclear verdicts count as ties."""

    def as_b(v: Verdict | None) -> float:
        return {"B": 1.0, "A": 0.0}.get(v or "TIE", 0.5)

    def as_a(v: Verdict | None) -> float:
        return {"A": 1.0, "B": 0.0}.get(v or "TIE", 0.5)

    return (as_b(first) + as_a(second)) / 2.0
