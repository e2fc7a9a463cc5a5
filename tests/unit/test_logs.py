"""A worker process's log lines reach the real stderr whole, without the hop through Dramatiq's
log pipe and its parent process; long lines and other streams keep the way they had."""

from __future__ import annotations

import io
import multiprocessing

import pytest
from dramatiq.compat import StreamablePipe

from app.logs import ATOMIC_WRITE_BYTES, _direct, _DirectStderr


def test_our_lines_skip_dramatiqs_pipe_and_long_ones_take_it(capfd: pytest.CaptureFixture[str]) -> None:
    receiving, sending = multiprocessing.Pipe(duplex=False)
    stream = _direct(StreamablePipe(sending))
    assert isinstance(stream, _DirectStderr)

    stream.write('{"event": "job succeeded"}\n')
    stream.flush()
    assert capfd.readouterr().err == '{"event": "job succeeded"}\n'
    assert not receiving.poll(0.1), "a short line does not go through the parent"

    long = "x" * (ATOMIC_WRITE_BYTES + 1) + "\n"
    stream.write(long)
    assert receiving.recv_bytes().decode() == long, "a long line is serialised by the parent"
    assert capfd.readouterr().err == ""


def test_any_other_stream_is_used_as_it_is() -> None:
    stream = io.StringIO()
    assert _direct(stream) is stream
