"""Where a step ends: the delimiter found in the decoded byte stream, across token boundaries.

Token pieces are bytes (a multi-byte UTF-8 character may span tokens, and a delimiter such as
``"\\n\\n"`` may be split over two tokens or sit inside one token like ``".\\n\\n"``), so the
step text is accumulated as bytes and searched for the delimiter's bytes.

Rules (documented because they decide what a "step" is):

* The step ends at the first delimiter that has non-whitespace text before it in this step;
  a delimiter at the very start (only whitespace before it) does not end the step, so no step
  is ever empty. ``Step.text`` is the bytes before the delimiter, decoded.
* Bytes *after* the delimiter inside the same token (e.g. a token ``"\\n\\n\\n"`` or
  ``"\\n\\nThe"``) are not dropped: they are the ``carry`` that the next step of this
  particle starts with (the model has already seen them: they are in the KV cache). Joining a
  particle's step texts with the delimiter therefore reproduces the generated text exactly.
* At the token cap the step ends with ``finish="length"``; an incomplete UTF-8 character at
  the end is carried into the next step instead of being decoded half.
"""

from __future__ import annotations


def utf8_complete_prefix(buf: bytes | bytearray) -> int:
    """Length of the longest prefix of ``buf`` that does not end inside a UTF-8 character."""
    n = len(buf)
    for back in range(1, min(4, n) + 1):
        b = buf[n - back]
        if b & 0xC0 == 0x80:  # continuation byte: keep looking for the lead byte
            continue
        need = 1 if b < 0x80 else 2 if b >> 5 == 0b110 else 3 if b >> 4 == 0b1110 else 4
        return n if back >= need else n - back
    return n


class StepText:
    """Accumulates the pieces of one step and reports the delimiter position."""

    __slots__ = ("_scan", "buf", "delim")

    def __init__(self, delimiter: str, carry: bytes = b"") -> None:
        self.delim = delimiter.encode("utf-8")
        self.buf = bytearray(carry)
        self._scan = 0

    def add(self, piece: bytes) -> int:
        """Append a token's bytes; return the delimiter's byte offset, or -1 if not (yet) there."""
        self.buf += piece
        i = self.buf.find(self.delim, self._scan)
        while i != -1:
            if self.buf[:i].strip():
                return i
            i = self.buf.find(self.delim, i + 1)
        self._scan = max(0, len(self.buf) - len(self.delim) + 1)
        return -1

    def split(self, at: int) -> tuple[str, bytes]:
        """(text before the delimiter at ``at``, bytes after it)."""
        text = bytes(self.buf[:at]).decode("utf-8", errors="replace")
        return text, bytes(self.buf[at + len(self.delim):])

    def cut(self, final: bool) -> tuple[str, bytes]:
        """The whole buffer as text; unless ``final``, an incomplete last character is carried."""
        k = len(self.buf) if final else utf8_complete_prefix(self.buf)
        return bytes(self.buf[:k]).decode("utf-8", errors="replace"), bytes(self.buf[k:])
