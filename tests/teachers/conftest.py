from __future__ import annotations

import pytest
from teacher_fakes import FakeProvider


@pytest.fixture
async def provider():
    server = FakeProvider()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture(params=["httpx2", "aiohttp"])
def transport(request) -> str:
    """Each fault-mapping test runs on both SDK transports (``teacher.transport``)."""
    return request.param
