"""Text for people: cutting a long cell of a table (the CLI, the reports)."""

from __future__ import annotations

__all__ = ["clip"]


def clip(text: str | None, width: int) -> str:
    """``text`` cut to ``width`` characters at a word boundary, ending with "…" when cut.

    >>> clip("the canary was rolled back automatically", 20)
    'the canary was…'
    >>> clip("supercalifragilistic", 10)
    'supercali…'
    """
    text = text or ""
    if len(text) <= width:
        return text
    cut = text[: width - 1]
    space = cut.rfind(" ")
    if space >= width // 2:  # a word boundary not too far back; else cut inside the long word
        cut = cut[:space]
    return cut.rstrip(" ,;:-") + "…"
