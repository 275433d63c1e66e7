"""Incremental text for one request: token ids in, text deltas out, stop strings cut.

Tokens go through the tokenizer's `StreamDecoder` (complete characters only). A stop string may
span several tokens, so the last `len(longest stop) - 1` characters are held back until the next
tokens show whether they start one: text once sent is never taken back. When a stop string
appears, the text is cut right before it and the request ends.
"""

from __future__ import annotations

from ..generation.stopping import find_stop
from ..tokenizer import Tokenizer


class TextTracker:
    def __init__(self, tokenizer: Tokenizer, stops: tuple[str, ...], skip_special_tokens: bool = True):
        self.decoder = tokenizer.stream_decoder(skip_special_tokens)
        self.stops = stops
        self.hold = max((len(s) for s in stops), default=1) - 1
        self.text = ""
        self.sent = 0  # characters of `text` already handed out

    def add(self, token_id: int) -> str | None:
        """Append one token's text; returns the stop string it completed, if any (text then cut)."""
        return self._append(self.decoder.step(token_id))

    def finish(self) -> str | None:
        """End of the stream: flush what the decoder held (an unfinished character)."""
        return self._append(self.decoder.flush())

    def _append(self, piece: str) -> str | None:
        if not piece:
            return None
        start = max(0, len(self.text) - self.hold)
        self.text += piece
        if not self.stops:
            return None
        window = self.text[start:]
        cut = find_stop(window, self.stops)
        if cut is None:
            return None
        stop = min((s for s in self.stops if window.startswith(s, cut)), key=len)
        self.text = self.text[:start + cut]
        return stop

    def delta(self, final: bool) -> str:
        """Text not yet handed out; while not `final`, minus what a stop string might still claim."""
        end = len(self.text) if final else max(self.sent, len(self.text) - self.hold)
        out = self.text[self.sent:end]
        self.sent = end
        return out
