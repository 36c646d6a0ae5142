"""The incremental SSE splitter: events split anywhere come out whole, once, in order."""

from __future__ import annotations

from router.streams.sse import SSESplitter, encode_event, parse_event

STREAM = (
    b'data: {"a": 1}\n\n'
    b"event: response.created\ndata: {\"b\": 2}\n\n"
    b": a comment\n\n"
    b"data: line one\ndata: line two\n\n"
    b'data: {"caf\xc3\xa9": 3}\r\n\r\n'
    b"data: [DONE]\n\n"
)


def datas(events) -> list[bytes]:
    return [e.data for e in events]


def test_every_split_position_gives_the_same_events():
    whole = datas(SSESplitter().feed(STREAM))
    assert whole == [b'{"a": 1}', b'{"b": 2}', b"line one\nline two", '{"café": 3}'.encode(), b"[DONE]"]
    for cut in range(1, len(STREAM)):
        splitter = SSESplitter()
        got = splitter.feed(STREAM[:cut]) + splitter.feed(STREAM[cut:])
        assert datas(got) == whole, cut
        assert splitter.pending == 0


def test_byte_by_byte_and_raw_bytes_are_kept():
    splitter = SSESplitter()
    events = [e for i in range(len(STREAM)) for e in splitter.feed(STREAM[i:i + 1])]
    assert b"".join(e.encode() for e in events) == STREAM.replace(b": a comment\n\n", b"")
    assert events[1].event == "response.created" and events[-1].is_done


def test_a_last_event_without_its_blank_line_is_flushed():
    splitter = SSESplitter()
    assert splitter.feed(b'data: {"x": 1}\n\ndata: {"y"') == [parse_event(b'data: {"x": 1}\n\n')]
    assert splitter.pending > 0
    tail = splitter.feed(b": 2}") + splitter.flush()
    assert datas(tail) == [b'{"y": 2}'] and tail[0].encode().endswith(b"\n\n")
    assert splitter.flush() == []


def test_encode_event_round_trips():
    raw = encode_event(b"one\ntwo", event="delta", id="7")
    event = parse_event(raw)
    assert event is not None and (event.data, event.event, event.id) == (b"one\ntwo", "delta", "7")
