"""The API's limits: the generation slot and its queue, the bind check (fast tier)."""

from __future__ import annotations

import asyncio

import pytest

from rag.serve.app import UnsafeBind, check_bind
from rag.serve.limits import GenerationSlot, is_loopback
from rag.serve.schemas import ApiError
from rag.settings import Settings


def test_one_holder_at_a_time_and_a_bounded_queue():
    async def scenario() -> tuple[list[str], ApiError]:
        slot = GenerationSlot(queue_size=2)
        order: list[str] = []
        await slot.acquire()  # the running generation

        async def waiter(name: str) -> None:
            await slot.acquire()
            order.append(name)
            slot.release()

        waiters = [asyncio.create_task(waiter(name)) for name in ("a", "b")]
        await asyncio.sleep(0)
        assert slot.waiting == 2
        with pytest.raises(ApiError) as refused:
            await slot.acquire()
        slot.release()
        await asyncio.gather(*waiters)
        return order, refused.value

    order, refused = asyncio.run(scenario())
    assert order == ["a", "b"]
    assert refused.status == 429 and int(refused.headers["Retry-After"]) >= 1


def test_a_client_that_leaves_the_queue_never_holds_the_model():
    async def scenario() -> tuple[int, list[str]]:
        slot = GenerationSlot(queue_size=2)
        await slot.acquire()  # the running generation
        left = asyncio.Event()
        order: list[str] = []

        async def gone() -> bool:
            return left.is_set()

        async def waiter(name: str, leaves: bool) -> None:
            try:
                await slot.acquire(gone=gone if leaves else None)
            except ApiError as error:
                order.append(f"{name}: {error.status}")
                return
            order.append(f"{name}: holds the model")
            slot.release()

        waiters = [asyncio.create_task(waiter("leaver", True)), asyncio.create_task(waiter("stayer", False))]
        await asyncio.sleep(0.01)
        left.set()
        for _ in range(50):  # the queue notices within a poll
            if slot.waiting == 1:
                break
            await asyncio.sleep(0.02)
        waiting_after_leave = slot.waiting
        slot.release()
        await asyncio.gather(*waiters)
        return waiting_after_leave, order

    waiting, order = asyncio.run(scenario())
    assert waiting == 1
    assert order == ["leaver: 499", "stayer: holds the model"]


def test_a_client_that_leaves_as_its_turn_comes_frees_the_model_for_the_next():
    async def scenario() -> bool:
        slot = GenerationSlot(queue_size=2)
        await slot.acquire()

        async def gone() -> bool:
            return True  # the disconnect is seen only once the model is free

        leaver = asyncio.create_task(slot.acquire(gone=gone))
        await asyncio.sleep(0)
        slot.release()  # the leaver wins the model at once, sees its client gone, and hands it on
        with pytest.raises(ApiError):
            await leaver
        await asyncio.wait_for(slot.acquire(), 1)  # not leaked
        return slot.busy

    assert asyncio.run(scenario()) is True


@pytest.mark.parametrize(("host", "loopback"), [("127.0.0.1", True), ("::1", True), ("localhost", True), ("0.0.0.0", False), ("192.168.1.4", False)])
def test_loopback_hosts(host, loopback):
    assert is_loopback(host) is loopback


def test_a_public_bind_needs_an_api_key():
    with pytest.raises(UnsafeBind, match="RAG_API_KEY"):
        check_bind(Settings(host="0.0.0.0"))
    check_bind(Settings(host="0.0.0.0", api_key="secret"))
    check_bind(Settings())


def test_rag_serve_refuses_a_public_bind_without_a_key_before_loading_anything():
    from click.testing import CliRunner

    from rag.cli import EXIT_ERROR, cli

    result = CliRunner().invoke(cli, ["serve", "--host", "0.0.0.0", "--port", "1"])
    assert result.exit_code == EXIT_ERROR and "RAG_API_KEY" in result.stderr and "Traceback" not in result.output
