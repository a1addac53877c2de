"""Spare slides for steps that need n slides that work (Figure 4's predictions).

Kept apart from `zoommil.workflow.failure`, which every per-slide command imports: a rule's
code hash covers what its command imports, so a helper only the Snakefile calls lives here,
where editing it reruns no slide's preprocessing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence


def first_successes(
    candidates: Sequence[str], n: int, succeeded: Callable[[str], bool | None]
) -> list[str]:
    """The ``candidates``, in order, up to the ``n``-th that succeeds, so that a failed one is
    replaced by the next (Figure 4's slides). ``succeeded`` says True, False (failed: kept in
    the list, so that readers can say why it is missing) or None (not known yet: it holds its
    place until it is); it is called only for the candidates looked at."""
    chosen, held = [], 0
    for candidate in candidates:
        if held >= n:
            break
        chosen.append(candidate)
        held += succeeded(candidate) is not False
    return chosen


def classes_in_turn(slides: Sequence[str], labels: Sequence[str]) -> list[str]:
    """``slides`` reordered so that their classes take turns (first the first slide of each
    class, in the order the classes first appear, then the second of each, ...), each class
    in its own order: Figure 4's first n slides then show every class where n allows (the
    first three test slides of the demo were one normal and two carcinomas, review W)."""
    by_label: dict[str, list[str]] = {}
    for slide, label in zip(slides, labels, strict=True):
        by_label.setdefault(str(label), []).append(slide)
    queues = list(by_label.values())
    out: list[str] = []
    for rank in range(max((len(q) for q in queues), default=0)):
        out += [q[rank] for q in queues if rank < len(q)]
    return out
