"""The bus: one suite, run against the in-process bus and Redis.

Redis: the server of SFSTREAM_TEST_REDIS_URL (default redis://127.0.0.1:6379/0). Each test
gets its own random key prefix and deletes its keys afterwards (never FLUSHDB: the server may
be shared). If the server does not answer, the redis cases are skipped, or fail when CI=true.

Windows and ttls here are short and a few tests sleep past them: there the passage of time is
the behaviour under test.
"""
from __future__ import annotations

import asyncio
import os
import secrets

import pytest
import redis
import redis.asyncio as aioredis

from sfstream.bus import Bus, BusUnavailable, InProcessBus, open_bus
from sfstream.bus.redis import RedisBus, describe_url

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
HOW_TO_ENABLE = "start Redis on 127.0.0.1:6379 or set SFSTREAM_TEST_REDIS_URL"

SHORT = 0.2  # seconds: a window or ttl the test waits out
LONG = 60.0  # seconds: a window or ttl that must not run out during the test


@pytest.fixture(scope="session")
def redis_url() -> str:
    """A Redis URL, after checking the server answers."""
    url = os.environ.get("SFSTREAM_TEST_REDIS_URL") or DEFAULT_REDIS_URL
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=3)
        try:
            client.ping()
        finally:
            client.close()
    except (redis.RedisError, OSError) as exc:
        message = f"Redis does not answer on {describe_url(url)} ({type(exc).__name__}: {exc}); {HOW_TO_ENABLE}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return url


@pytest.fixture
def redis_prefix(redis_url):
    """A fresh key prefix; every key under it is deleted after the test."""
    prefix = f"sfstream-test-{secrets.token_hex(6)}:"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture
async def open_redis_bus(redis_url, redis_prefix):
    """Open RedisBus instances under the test's prefix (or a sub-prefix of it); closed after the test."""
    opened: list[Bus] = []

    async def open_(sub: str = "") -> Bus:
        bus = await open_bus(redis_url, prefix=redis_prefix + sub)
        opened.append(bus)
        return bus

    yield open_
    for bus in opened:
        await bus.close()


@pytest.fixture(params=["memory", "redis"])
async def bus(request) -> Bus:
    if request.param == "memory":
        bus = await open_bus("")
    else:
        # Only synchronous fixtures here: getfixturevalue cannot set up async ones from a running loop.
        bus = await open_bus(request.getfixturevalue("redis_url"), prefix=request.getfixturevalue("redis_prefix"))
    yield bus
    await bus.close()


async def test_open_bus_picks_the_implementation(bus, request):
    expected = InProcessBus if request.node.callspec.params["bus"] == "memory" else RedisBus
    assert type(bus) is expected


async def test_counts_hits_within_a_window(bus):
    for expected in range(1, 6):
        count, retry_after = await bus.incr("login:10.0.0.1", LONG)
        assert count == expected
        assert 0 < retry_after <= LONG
    assert (await bus.peek("login:10.0.0.1"))[0] == 5


async def test_keys_count_separately(bus):
    await bus.incr("a", LONG)
    await bus.incr("a", LONG)
    assert (await bus.incr("b", LONG))[0] == 1
    assert (await bus.peek("a"))[0] == 2
    assert (await bus.peek("b"))[0] == 1


async def test_window_starts_at_first_hit_and_is_not_extended(bus):
    _, first = await bus.incr("k", LONG)
    await asyncio.sleep(0.05)
    _, later = await bus.incr("k", LONG)
    # A sliding window would be back near LONG; a fixed one has counted down since the first hit.
    assert later <= first - 0.04


async def test_window_expires_and_counting_starts_over(bus):
    for _ in range(3):
        await bus.incr("k", SHORT)
    await asyncio.sleep(SHORT + 0.05)
    assert await bus.peek("k") == (0, 0.0)
    count, retry_after = await bus.incr("k", SHORT)
    assert count == 1
    assert SHORT - 0.05 < retry_after <= SHORT


async def test_retry_after_decreases(bus):
    _, first = await bus.incr("k", 1.0)
    await asyncio.sleep(0.1)
    _, second = await bus.incr("k", 1.0)
    _, peeked = await bus.peek("k")
    assert 0 < peeked <= second < first <= 1.0
    assert first - second >= 0.08


async def test_peek_does_not_count(bus):
    assert await bus.peek("k") == (0, 0.0)
    await bus.incr("k", LONG)
    for _ in range(3):
        count, retry_after = await bus.peek("k")
        assert count == 1
        assert 0 < retry_after <= LONG
    assert (await bus.incr("k", LONG))[0] == 2


async def test_reset_forgets_the_counter(bus):
    await bus.incr("k", LONG)
    await bus.incr("k", LONG)
    await bus.reset("k")
    assert await bus.peek("k") == (0, 0.0)
    assert (await bus.incr("k", LONG))[0] == 1
    await bus.reset("never-seen")  # not an error


async def test_window_must_be_positive(bus):
    for window in (0, -1.0, float("nan")):
        with pytest.raises(ValueError):
            await bus.incr("k", window)


async def test_concurrent_hits_get_each_count_exactly_once(bus):
    results = await asyncio.gather(*(bus.incr("hot", LONG) for _ in range(200)))
    assert sorted(count for count, _ in results) == list(range(1, 201))
    # The window was set once, by the first hit, not restarted by later ones.
    assert all(0 < retry_after <= LONG for _, retry_after in results)
    assert (await bus.peek("hot"))[0] == 200


async def test_revoked_token_is_remembered_until_its_ttl(bus):
    assert not await bus.is_revoked("jti-1")
    await bus.revoke("jti-1", SHORT)
    await bus.revoke("jti-2", LONG)
    assert await bus.is_revoked("jti-1")
    assert await bus.is_revoked("jti-2")
    assert not await bus.is_revoked("jti-3")
    await asyncio.sleep(SHORT + 0.05)
    assert not await bus.is_revoked("jti-1")
    assert await bus.is_revoked("jti-2")


async def test_revoking_an_expired_token_remembers_nothing(bus):
    await bus.revoke("jti-old", 0)
    await bus.revoke("jti-older", -5.0)
    assert not await bus.is_revoked("jti-old")
    assert not await bus.is_revoked("jti-older")


async def test_counters_and_revocations_do_not_collide(bus):
    await bus.revoke("x", LONG)
    assert await bus.peek("x") == (0, 0.0)
    await bus.incr("y", LONG)
    assert not await bus.is_revoked("y")
    await bus.reset("x")
    assert await bus.is_revoked("x")


# Redis only


async def test_redis_buses_with_different_prefixes_do_not_see_each_other(open_redis_bus):
    one, two = await open_redis_bus("one:"), await open_redis_bus("two:")
    await one.incr("k", LONG)
    await one.incr("k", LONG)
    await one.revoke("jti", LONG)
    assert await two.peek("k") == (0, 0.0)
    assert not await two.is_revoked("jti")
    assert (await two.incr("k", LONG))[0] == 1
    # Same prefix: another instance of the app shares the state.
    same = await open_redis_bus("one:")
    assert (await same.peek("k"))[0] == 2
    assert await same.is_revoked("jti")


async def test_redis_keys_carry_the_prefix_and_an_expiry(open_redis_bus, redis_url, redis_prefix):
    bus = await open_redis_bus()
    await bus.incr("k", LONG)
    await bus.revoke("jti", LONG)
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        keys = sorted([key async for key in client.scan_iter(match=f"{redis_prefix}*")])
        assert keys == [f"{redis_prefix}rate:k", f"{redis_prefix}revoked:jti"]
        for key in keys:
            assert 0 < await client.pttl(key) <= LONG * 1000
    finally:
        await client.aclose()


async def test_redis_counter_left_without_expiry_gets_one(open_redis_bus, redis_url, redis_prefix):
    # A counter that never expires would lock a client out for good, whoever wrote it.
    bus = await open_redis_bus()
    client = aioredis.Redis.from_url(redis_url)
    try:
        await client.set(f"{redis_prefix}rate:k", 7)
        count, retry_after = await bus.incr("k", LONG)
        assert count == 8
        assert 0 < retry_after <= LONG
        assert 0 < await client.pttl(f"{redis_prefix}rate:k") <= LONG * 1000
    finally:
        await client.aclose()


async def test_open_bus_fails_clearly_when_redis_does_not_answer():
    # Port 1 on localhost: nothing listens there. The password must not show in the message.
    with pytest.raises(BusUnavailable) as info:
        await open_bus("redis://user:s3cret-pw@127.0.0.1:1/0")
    message = str(info.value)
    assert "127.0.0.1:1" in message
    assert "s3cret-pw" not in message
    assert isinstance(info.value, OSError)  # `serve` reports OSErrors as "cannot start"


async def test_open_bus_fails_clearly_on_a_wrong_password(redis_url):
    # Whether the server has no password (AUTH refused) or another one: never the password in the message.
    if "@" in redis_url or redis_url.startswith("unix:"):
        pytest.skip("SFSTREAM_TEST_REDIS_URL carries credentials or is a socket")
    url = redis_url.replace("://", "://sfstream-nobody:s3cret-pw@", 1)
    with pytest.raises(BusUnavailable) as info:
        await open_bus(url)
    assert describe_url(redis_url) in str(info.value)
    assert "s3cret-pw" not in str(info.value)


async def test_open_bus_refuses_other_schemes():
    with pytest.raises(ValueError, match="unsupported bus URL scheme 'http'"):
        await open_bus("http://127.0.0.1:6379")


def test_describe_url_drops_credentials():
    assert describe_url("redis://u:pw@example.org:6380/2") == "redis://example.org:6380/2"
    assert describe_url("rediss://:pw@[::1]/0") == "rediss://[::1]:6379/0"
    assert describe_url("unix:///run/redis.sock?db=1") == "unix:///run/redis.sock"
    assert describe_url("redis://h/0?password=pw") == "redis://h:6379/0"


# In-process only


async def test_in_process_key_limit_evicts_closest_to_expiry():
    bus = InProcessBus(max_keys=3)
    await bus.incr("a", 30.0)
    await bus.incr("b", 10.0)  # closest to expiry
    await bus.incr("c", 20.0)
    await bus.incr("a", 30.0)
    await bus.incr("d", 40.0)
    assert len(bus) == 3
    assert await bus.peek("b") == (0, 0.0)
    assert [(await bus.peek(k))[0] for k in "acd"] == [2, 1, 1]
    # A key already held is counted, not evicting anything.
    await bus.incr("a", 30.0)
    assert len(bus) == 3
    assert (await bus.peek("c"))[0] == 1


async def test_in_process_key_limit_purges_expired_entries_first():
    bus = InProcessBus(max_keys=3)
    await bus.incr("old", 0.05)
    await bus.incr("live1", 30.0)
    await bus.incr("live2", 30.0)
    await asyncio.sleep(0.1)  # "old" expires
    await bus.incr("new", 60.0)
    assert len(bus) == 3
    assert [(await bus.peek(k))[0] for k in ("live1", "live2", "new")] == [1, 1, 1]


async def test_in_process_limit_holds_under_many_keys():
    bus = InProcessBus(max_keys=100)
    for i in range(10_000):
        await bus.incr(f"ip:{i}", 60.0 + i)  # later keys expire later: the newest 100 stay
        await bus.reset(f"ip:{i - 50}")  # stale heap items must not pile up either
    assert len(bus) <= 100
    assert (await bus.peek("ip:9999"))[0] == 1
    for _ in range(10_000):  # the same key again and again: each reset leaves a stale heap item
        await bus.incr("again", 60.0)
        await bus.reset("again")
    assert len(bus._counters._heap) <= 2 * 1024 + 1


async def test_in_process_revocations_have_their_own_limit():
    # A flood of rate-limit keys (one per client IP) must not evict a revocation.
    bus = InProcessBus(max_keys=10)
    await bus.revoke("jti", 1.0)
    for i in range(100):
        await bus.incr(f"ip:{i}", 3600.0)
    assert await bus.is_revoked("jti")
    for i in range(10):
        await bus.revoke(f"other-{i}", 3600.0)
    assert not await bus.is_revoked("jti")  # full: the one closest to expiry went
    assert await bus.is_revoked("other-0")


def test_in_process_max_keys_must_be_positive():
    with pytest.raises(ValueError):
        InProcessBus(max_keys=0)


# --- viewer presence ---

async def test_presence_counts_members_once_and_leave_removes(bus):
    await bus.touch("g", ["a", "b"], LONG)
    await bus.touch("g", ["a"], LONG)  # a second touch extends, it does not add
    await bus.touch("other", ["a"], LONG)
    assert await bus.present("g") == 2
    await bus.leave("g", "a")
    assert await bus.present("g") == 1
    assert await bus.distinct("g") == 2  # leaving does not undo having watched
    assert await bus.present("nobody") == 0 and await bus.distinct("nobody") == 0


async def test_presence_expires_after_ttl_unless_touched(bus):
    await bus.touch("g", ["gone"], SHORT)
    await bus.touch("g", ["stays"], LONG)
    await asyncio.sleep(SHORT + 0.05)
    assert await bus.present("g") == 1
    assert await bus.distinct("g") == 2


async def test_forget_drops_presence_and_distinct(bus):
    await bus.touch("g", [f"m{i}" for i in range(50)], LONG)
    assert (await bus.present("g"), await bus.distinct("g")) == (50, 50)
    await bus.forget("g")
    assert (await bus.present("g"), await bus.distinct("g")) == (0, 0)


async def test_presence_rejects_bad_ttl(bus):
    with pytest.raises(ValueError):
        await bus.touch("g", ["a"], 0)


async def test_in_process_presence_is_bounded():
    bus = InProcessBus(max_keys=3)
    await bus.touch("g", [f"m{i}" for i in range(10)], LONG)
    assert await bus.present("g") == 3  # a flood of made-up sessions cannot grow memory without end
    assert await bus.distinct("g") == 10  # still counted as distinct, without keeping them all


async def test_alive_tells_which_members_are_present(bus):
    await bus.touch("g", ["a", "b"], LONG)
    await bus.touch("g", ["gone"], SHORT)
    await asyncio.sleep(SHORT + 0.05)
    assert await bus.alive("g", ["a", "gone", "never"]) == {"a"}
    assert await bus.alive("other", ["a"]) == set() and await bus.alive("g", []) == set()
