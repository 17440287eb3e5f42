"""Chunks an engine thread queued are merged into one event when they pile up, never reordered or lost."""

import asyncio

import pytest

from tuneforge.serve.engines.base import Chunk, queued_chunks


def collect(items, put_later=()):
    async def go():
        inbox: asyncio.Queue = asyncio.Queue()
        for item in items:
            inbox.put_nowait(item)
        out = []

        async def feed():
            for item in put_later:
                await asyncio.sleep(0.01)
                inbox.put_nowait(item)

        feeder = asyncio.create_task(feed())
        async for chunk in queued_chunks(inbox):
            out.append(chunk)
        await feeder
        return out

    return asyncio.run(go())


def test_queued_chunks_merge_into_one_event():
    out = collect([Chunk("Xin", 1), Chunk(" chào", 2), Chunk("!", 3, "stop")])
    assert out == [Chunk("Xin chào!", 3, "stop")]


def test_chunks_arriving_one_by_one_stay_separate():
    out = collect([Chunk("a", 1)], put_later=[Chunk("b", 2), Chunk("", 3, "length")])
    assert [c.text for c in out] == ["a", "b", ""]
    assert out[-1] == Chunk("", 3, "length")


def test_nothing_after_the_finishing_chunk_is_read():
    out = collect([Chunk("a", 1, "stop"), Chunk("late", 2)])
    assert out == [Chunk("a", 1, "stop")]


def test_an_engine_error_comes_after_the_text_before_it():
    async def go():
        inbox: asyncio.Queue = asyncio.Queue()
        for item in (Chunk("a", 1), Chunk("b", 2), RuntimeError("decode failed")):
            inbox.put_nowait(item)
        seen = []
        with pytest.raises(RuntimeError, match="decode failed"):
            async for chunk in queued_chunks(inbox):
                seen.append(chunk)
        return seen

    assert asyncio.run(go()) == [Chunk("ab", 2)]
