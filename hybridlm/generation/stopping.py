"""Stop strings: find the first one in a row's generated text, cut the text and the tokens there."""

from __future__ import annotations

from typing import Callable, Sequence

Decode = Callable[[list[int]], str]


def find_stop(text: str, stops: Sequence[str]) -> int | None:
    """Index of the earliest occurrence of any stop string in text, or None."""
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(found) if found else None


def tokens_before(ids: list[int], decode: Decode, cut: int) -> list[int]:
    """The longest prefix of ids whose decoded text ends at or before character `cut`.

    A token that straddles the cut is dropped whole, so the tokens may decode to a little less than
    the cut text (the text, cut exactly, is the authoritative output).
    """
    n = len(ids)
    while n > 0 and len(decode(ids[:n])) > cut:
        n -= 1
    return ids[:n]


class StopWatcher:
    """Watches one row's output for stop strings; `check` after every new token.

    The whole output is decoded each time rather than token by token: a token's text can depend on
    its neighbours (byte-level BPE splits characters across tokens, SentencePiece drops a leading
    space), and a stop string can span several tokens.
    """

    def __init__(self, stops: Sequence[str], decode: Decode):
        self.stops, self.decode = tuple(stops), decode

    def check(self, ids: list[int]) -> tuple[list[int], str] | None:
        """None while no stop string is in decode(ids); else (tokens, text) cut before it."""
        text = self.decode(ids)
        cut = find_stop(text, self.stops)
        if cut is None:
            return None
        return tokens_before(ids, self.decode, cut), text[:cut]
