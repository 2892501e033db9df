"""_patches/uvicorn_http.CoalescedWrites: a response's writes of one turn go out as one."""

from __future__ import annotations

import asyncio
from typing import Any

from onnx_serving._patches.uvicorn_http import CoalescedWrites


class Transport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str) -> Any:
        return ("127.0.0.1", 1) if name == "peername" else None


def test_a_head_and_a_body_written_in_one_turn_go_out_as_one_write() -> None:
    async def go() -> Transport:
        transport = Transport()
        wrapped = CoalescedWrites(transport, asyncio.get_running_loop())
        wrapped.write(b"HTTP/1.1 200 OK\r\n\r\n")
        wrapped.write(b"{}")
        assert transport.writes == []  # held until the turn ends
        await asyncio.sleep(0)
        wrapped.write(b"next")
        await asyncio.sleep(0)
        return transport

    assert asyncio.run(go()).writes == [b"HTTP/1.1 200 OK\r\n\r\n{}", b"next"]


def test_large_pieces_are_written_as_they_are_and_close_writes_what_is_held_first() -> None:
    async def go() -> Transport:
        transport = Transport()
        wrapped = CoalescedWrites(transport, asyncio.get_running_loop())
        big = b"x" * 100_000
        wrapped.write(b"head")
        wrapped.write(big)
        await asyncio.sleep(0)
        assert transport.writes[1] is big  # not copied into a joined buffer
        wrapped.write(b"last words")
        wrapped.close()
        assert wrapped.get_extra_info("peername") == ("127.0.0.1", 1)  # the rest: delegated
        return transport

    transport = asyncio.run(go())
    assert transport.writes[-1] == b"last words" and transport.closed


def test_nothing_is_written_to_a_closing_transport() -> None:
    async def go() -> Transport:
        transport = Transport()
        wrapped = CoalescedWrites(transport, asyncio.get_running_loop())
        wrapped.write(b"late")
        transport.closed = True
        await asyncio.sleep(0)
        return transport

    assert asyncio.run(go()).writes == []
