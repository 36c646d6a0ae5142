"""Incremental splitters: an answer's text in, ``(channel, text)`` pieces out.

Channels are GPT-OSS's names, used for every format: ``analysis`` (the thinking),
``commentary`` (GPT-OSS's preambles and tool talk) and ``final`` (the answer). A
splitter is fed the text as it arrives (a whole answer is one feed) and holds back only
what might be the start of a tag or marker (``<thi`` before ``nk>``); ``flush`` releases
what is held when the answer ends.

- ``ThinkSplitter``: a leading ``<think>``…``</think>`` (tags configurable) is the
  analysis; the rest is final. No closing tag: everything after the opening one is
  analysis.
- ``HarmonySplitter``: GPT-OSS's harmony text (``<|channel|>analysis<|message|>…<|end|>
  <|start|>assistant<|channel|>final<|message|>…``). The ``openai-harmony`` package parses
  token ids, and turning text back into ids needs its vocabulary file, downloaded at first
  use (a router offline cannot); the markers are plain text in what backends return, so
  they are parsed here.
- ``AutoSplitter``: waits for the answer's first characters, then picks one of the two,
  or neither (``plain``: everything is final, nothing held).
"""

from __future__ import annotations

from collections.abc import Sequence

Piece = tuple[str, str]

ANALYSIS, COMMENTARY, FINAL = "analysis", "commentary", "final"
CHANNELS = (ANALYSIS, COMMENTARY, FINAL)

HARMONY_START = "<|start|>"
HARMONY_CHANNEL = "<|channel|>"
HARMONY_MESSAGE = "<|message|>"
HARMONY_CONSTRAIN = "<|constrain|>"
_HARMONY_ENDS = ("<|end|>", "<|return|>", "<|call|>")
_HARMONY_MARKERS = (HARMONY_START, HARMONY_CHANNEL, HARMONY_MESSAGE, HARMONY_CONSTRAIN, *_HARMONY_ENDS)
#: What an answer in harmony format starts with.
HARMONY_LEADS = (HARMONY_CHANNEL, HARMONY_START)


class Splitter:
    """The interface: ``feed`` text, get pieces; ``flush`` at the end."""

    #: True once the splitter knows the answer has no thinking to split (everything is
    #: final from here on, nothing is held back).
    plain = False

    def feed(self, text: str) -> list[Piece]:
        raise NotImplementedError

    def flush(self) -> list[Piece]:
        return []


def _held_prefix(text: str, token: str) -> int:
    """The length of the longest end of ``text`` that is a proper start of ``token``."""
    for n in range(min(len(token) - 1, len(text)), 0, -1):
        if text.endswith(token[:n]):
            return n
    return 0


class PlainSplitter(Splitter):
    plain = True

    def feed(self, text: str) -> list[Piece]:
        return [(FINAL, text)] if text else []


class ThinkSplitter(Splitter):
    """``<think>`` … ``</think>`` at the start of the answer."""

    def __init__(self, open_tag: str = "<think>", close_tag: str = "</think>") -> None:
        self.open_tag = open_tag
        self.close_tag = close_tag
        self._state = "start"  # start -> thinking -> after -> final (or start -> final)
        self._held = ""

    def feed(self, text: str) -> list[Piece]:
        out: list[Piece] = []
        buf = self._held + text
        self._held = ""
        while buf:
            state = self._state
            if state == "start":
                lead = buf.lstrip()
                if lead.startswith(self.open_tag):
                    buf = lead[len(self.open_tag):]
                    self._state = "thinking"
                elif not lead or self.open_tag.startswith(lead):
                    self._held = buf  # whitespace, or the tag's first characters so far
                    break
                else:
                    self._state = "final"
                    self.plain = True
            elif state == "thinking":
                end = buf.find(self.close_tag)
                if end >= 0:
                    if end:
                        out.append((ANALYSIS, buf[:end]))
                    buf = buf[end + len(self.close_tag):]
                    self._state = "after"
                else:
                    keep = _held_prefix(buf, self.close_tag)
                    if len(buf) > keep:
                        out.append((ANALYSIS, buf[:len(buf) - keep]))
                    self._held = buf[len(buf) - keep:]
                    break
            elif state == "after":  # the blank line models put after </think> is dropped
                lead = buf.lstrip()
                if not lead:
                    break
                buf = lead
                self._state = "final"
            else:
                out.append((FINAL, buf))
                break
        return out

    def flush(self) -> list[Piece]:
        held, self._held = self._held, ""
        if not held:
            return []
        if self._state == "thinking":
            return [(ANALYSIS, held)]
        if self._state == "start":
            return [(FINAL, held)]
        return []


class HarmonySplitter(Splitter):
    """GPT-OSS harmony messages as text: each ``<|channel|>NAME<|message|>`` starts a piece
    of channel NAME (``commentary to=functions.x``: commentary), ``<|end|>``, ``<|return|>``
    or ``<|call|>`` ends it; headers (``<|start|>assistant``, ``<|constrain|>json``) are
    dropped. Text outside any message is final."""

    def __init__(self) -> None:
        self._channel = FINAL
        self._in_header = False
        self._reading_channel = False
        self._channel_text = ""
        self._held = ""

    def feed(self, text: str) -> list[Piece]:
        out: list[Piece] = []
        buf = self._held + text
        self._held = ""
        while buf:
            at = buf.find("<|")
            if at < 0:
                if buf.endswith("<"):  # perhaps a marker's first character
                    self._held = "<"
                    buf = buf[:-1]
                if buf:
                    self._text(buf, out)
                break
            if at:
                self._text(buf[:at], out)
                buf = buf[at:]
            marker = next((m for m in _HARMONY_MARKERS if buf.startswith(m)), None)
            if marker is None:
                if any(m.startswith(buf) for m in _HARMONY_MARKERS):
                    self._held = buf  # a marker's first characters: wait for the rest
                    break
                self._text("<|", out)  # not a marker after all
                buf = buf[2:]
                continue
            self._marker(marker)
            buf = buf[len(marker):]
        return out

    def _text(self, text: str, out: list[Piece]) -> None:
        if not self._in_header:
            if out and out[-1][0] == self._channel:
                out[-1] = (self._channel, out[-1][1] + text)
            else:
                out.append((self._channel, text))
        elif self._reading_channel:
            self._channel_text += text  # "analysis", or "commentary to=functions.x "

    def _marker(self, marker: str) -> None:
        if marker == HARMONY_MESSAGE:
            words = self._channel_text.split()
            channel = words[0] if words else FINAL
            self._channel = channel if channel in CHANNELS else COMMENTARY
            self._in_header = False
            self._reading_channel = False
            self._channel_text = ""
        elif marker == HARMONY_CHANNEL:
            self._in_header = True
            self._reading_channel = True
            self._channel_text = ""
        elif marker in (HARMONY_START, HARMONY_CONSTRAIN):
            self._in_header = True
            self._reading_channel = False
        else:  # <|end|>, <|return|>, <|call|>: the message is over; text after is final
            self._in_header = False
            self._channel = FINAL

    def flush(self) -> list[Piece]:
        held, self._held = self._held, ""
        out: list[Piece] = []
        if held:
            self._text(held, out)
        return out


class AutoSplitter(Splitter):
    """Picks the format from the answer's first characters: a leading think tag, or a
    harmony marker; anything else is plain."""

    def __init__(self, open_tag: str = "<think>", close_tag: str = "</think>",
                 formats: Sequence[str] = ("think", "harmony")) -> None:
        self.open_tag = open_tag
        self.close_tag = close_tag
        self.formats = tuple(formats)
        self._leads: list[tuple[str, str]] = []
        if "think" in self.formats:
            self._leads.append((open_tag, "think"))
        if "harmony" in self.formats:
            self._leads += [(lead, "harmony") for lead in HARMONY_LEADS]
        self._chosen: Splitter | None = None
        self._held = ""
        #: The format picked: "think", "harmony", "plain", or None while undecided.
        self.format: str | None = None

    def feed(self, text: str) -> list[Piece]:
        if self._chosen is not None:
            return self._chosen.feed(text)
        buf = self._held + text
        lead = buf.lstrip()
        if not lead or any(tag.startswith(lead) and tag != lead for tag, _ in self._leads):
            self._held = buf
            return []
        self._held = ""
        found = next((kind for tag, kind in self._leads if lead.startswith(tag)), None)
        self._choose(found or "plain")
        assert self._chosen is not None
        return self._chosen.feed(buf)

    def _choose(self, kind: str) -> None:
        self.format = kind
        if kind == "think":
            self._chosen = ThinkSplitter(self.open_tag, self.close_tag)
        elif kind == "harmony":
            self._chosen = HarmonySplitter()
        else:
            self._chosen = PlainSplitter()
            self.plain = True

    def flush(self) -> list[Piece]:
        if self._chosen is None:
            held, self._held = self._held, ""
            self._choose("plain")
            return [(FINAL, held)] if held else []
        return self._chosen.flush()


def make_splitter(parser: str, tags: Sequence[str]) -> Splitter:
    """The splitter for a ``reasoning.parser`` value (``none`` never gets here)."""
    open_tag, close_tag = tags[0], tags[1]
    if parser == "think":
        return AutoSplitter(open_tag, close_tag, formats=("think",))
    if parser == "harmony":
        return HarmonySplitter()
    return AutoSplitter(open_tag, close_tag)


def split_all(splitter: Splitter, text: str) -> dict[str, str]:
    """A whole answer's text by channel (channels with no text are absent)."""
    out: dict[str, str] = {}
    for channel, piece in splitter.feed(text) + splitter.flush():
        out[channel] = out.get(channel, "") + piece
    return out
