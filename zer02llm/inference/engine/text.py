"""A request's text as its tokens come: whole characters only, cut at the first stop string."""

from __future__ import annotations

from zer02llm.tokenizer import StreamDecoder, Tokenizer


class StopMatcher:
    """Cuts the reply at the first stop string; holds back text that may be the start of one."""

    def __init__(self, stops: list[str]):
        self.stops, self.text, self.sent = stops, "", 0

    def push(self, piece: str) -> tuple[str, bool]:
        """Add decoded text; returns (the text now safe to send, whether a stop string was reached)."""
        self.text += piece
        hits = [i for s in self.stops if (i := self.text.find(s, self.sent)) >= 0]
        if hits:
            cut = min(hits)
            out, self.sent = self.text[self.sent:cut], cut
            return out, True
        hold = 0  # the longest unsent tail that begins some stop string
        for s in self.stops:
            hold = max([hold] + [k for k in range(1, min(len(s), len(self.text) - self.sent + 1))
                                 if self.text.endswith(s[:k])])
        end = len(self.text) - hold
        out, self.sent = self.text[self.sent:end], end
        return out, False

    def flush(self) -> str:
        out, self.sent = self.text[self.sent:], len(self.text)
        return out


class TextState:
    """Incremental detokenizing of one sequence, with its stop strings."""

    def __init__(self, tokenizer: Tokenizer, stops: list[str]):
        self.decoder = StreamDecoder(tokenizer)
        self.matcher = StopMatcher(stops) if stops else None
        self.stopped = False

    def push(self, token: int) -> tuple[str, bool]:
        """(text now safe to send, whether a stop string ended the reply)."""
        piece = self.decoder.push(token)
        if self.matcher is None:
            return piece, False
        text, self.stopped = self.matcher.push(piece)
        return text, self.stopped

    def flush(self) -> str:
        """The rest at the end of the reply (not after a stop string, which ended it already)."""
        piece = self.decoder.flush()
        if self.matcher is None:
            return piece
        text, self.stopped = self.matcher.push(piece)
        return text if self.stopped else text + self.matcher.flush()
