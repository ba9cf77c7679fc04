"""The gateway's token stream hub against a real Redis of this module's own.

Not the session stack's: its gateway runs a hub too, whose connection CLIENT LIST keeps
showing in ``cmd=xread`` once it has read, which the one-reader check would count.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable, Iterator

import pytest
import redis.asyncio as aioredis

from deploy.local.redis import serving as redis_serving
from nlp.v1 import generation_pb2
from shared.contracts.names import Names
from shared.transport.streams import (
    Delta,
    End,
    Entry,
    TokenStreamFollower,
    TokenStreamHub,
    TokenStreamWriter,
)

STOP = generation_pb2.FINISH_REASON_STOP

Scenario = Callable[[TokenStreamHub, TokenStreamWriter, aioredis.Redis], Awaitable[None]]


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with redis_serving(tmp_path_factory.mktemp("hub-redis")) as url:
        yield url


@pytest.fixture
def run_with_hub(redis_url: str) -> Callable[..., None]:
    """Runs a scenario with a started hub, a writer and a client, in a namespace of its own."""

    def run(scenario: Scenario, block_ms: int = 5000) -> None:
        async def main() -> None:
            client = aioredis.Redis.from_url(redis_url)
            names = Names(f"hub-{uuid.uuid4().hex[:8]}")
            hub = TokenStreamHub(client, names, block_ms=block_ms)
            await hub.start()
            try:
                await scenario(hub, TokenStreamWriter(client, names, 10_000, 60), client)
            finally:
                await hub.stop()
                await client.aclose()

        asyncio.run(main())

    return run


async def _read_to_end(reader: TokenStreamFollower, limit_s: float = 30.0) -> list[Entry]:
    entries: list[Entry] = []
    async with asyncio.timeout(limit_s):
        while not entries or not isinstance(entries[-1], End):
            entries += await reader.read(1000)
    return entries


def _script(stream: int, deltas: int) -> list[Entry]:
    return [Delta(1, i, f"s{stream}d{i} ") for i in range(deltas)] + [
        End(1, deltas, STOP, 3, deltas)
    ]


def test_many_streams_are_followed_in_order_on_one_blocking_connection(
    run_with_hub: Callable[..., None],
) -> None:
    streams, deltas = 40, 6

    async def scenario(
        hub: TokenStreamHub, writer: TokenStreamWriter, client: aioredis.Redis
    ) -> None:
        async with contextlib.AsyncExitStack() as following:
            readers = [
                await following.enter_async_context(hub.follow(f"t{i}")) for i in range(streams)
            ]
            readers_done = [asyncio.create_task(_read_to_end(r)) for r in readers]
            await asyncio.sleep(0.2)
            clients = await client.client_list()
            # Only the hub blocks on XREAD, whatever the number of streams followed.
            assert sum(1 for c in clients if c.get("cmd") == "xread") == 1
            assert hub.followed == streams
            # The streams grow interleaved, as a step of the engine writes them.
            for step in range(deltas + 1):
                await asyncio.gather(
                    *(writer.append(f"t{i}", [_script(i, deltas)[step]]) for i in range(streams))
                )
            results = await asyncio.gather(*readers_done)
        for i, entries in enumerate(results):
            assert entries == _script(i, deltas)
        assert hub.followed == 0

    run_with_hub(scenario)


def test_a_stream_followed_during_a_blocked_read_is_read_at_once(
    run_with_hub: Callable[..., None],
) -> None:
    async def scenario(
        hub: TokenStreamHub, writer: TokenStreamWriter, client: aioredis.Redis
    ) -> None:
        async with hub.follow("first"):
            await asyncio.sleep(0.3)  # the hub is now blocked reading "first" alone
            async with hub.follow("second") as second:
                await writer.append("second", _script(2, 2))
                # Without the wake-up the hub's read would block for its 120 s.
                entries = await _read_to_end(second, limit_s=60.0)
        assert entries == _script(2, 2)

    run_with_hub(scenario, block_ms=120_000)


def test_a_second_follower_of_a_stream_being_read_gets_it_from_its_start(
    run_with_hub: Callable[..., None],
) -> None:
    async def scenario(
        hub: TokenStreamHub, writer: TokenStreamWriter, client: aioredis.Redis
    ) -> None:
        script = _script(3, 4)
        async with hub.follow("shared") as first:
            await writer.append("shared", script[:2])
            got: list[Entry] = []
            async with asyncio.timeout(30):
                while len(got) < 2:
                    got += await first.read(5000)
            assert got == script[:2]
            await asyncio.sleep(0.3)  # the hub now blocks reading "shared" after entry 2
            # A repeat of the call follows the same task (an idempotency key's).
            async with hub.follow("shared") as second:
                await writer.append("shared", script[2:])
                assert await _read_to_end(second, limit_s=60.0) == script
            assert await _read_to_end(first) == script[2:]

    run_with_hub(scenario, block_ms=120_000)


def test_a_late_follower_gets_the_whole_stream_beyond_one_read(
    run_with_hub: Callable[..., None],
) -> None:
    async def scenario(
        hub: TokenStreamHub, writer: TokenStreamWriter, client: aioredis.Redis
    ) -> None:
        script = _script(7, 600)  # more than one XREAD's count
        await writer.append("late", script)
        async with hub.follow("late") as reader:
            assert await _read_to_end(reader) == script
        # Asked without waiting, a follower reads Redis itself.
        await writer.append("now", _script(8, 1))
        async with hub.follow("now") as reader:
            assert await reader.read(None) == _script(8, 1)

    run_with_hub(scenario)


def test_a_malformed_entry_fails_its_own_reader_only(
    run_with_hub: Callable[..., None],
) -> None:
    async def scenario(
        hub: TokenStreamHub, writer: TokenStreamWriter, client: aioredis.Redis
    ) -> None:
        async with hub.follow("bad") as bad, hub.follow("good") as good:
            await client.xadd(hub.names.token_stream_key("bad"), {"junk": "1"})
            with pytest.raises(ValueError, match="token stream entry without"):
                await _read_to_end(bad)
            await writer.append("good", _script(1, 3))
            assert await _read_to_end(good) == _script(1, 3)

    run_with_hub(scenario)
