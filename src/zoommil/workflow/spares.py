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
