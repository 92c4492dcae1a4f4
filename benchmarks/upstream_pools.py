"""CPU per request of the proxy's upstream pools: the raw httptools pool vs aiohttp vs httpx2.

``python -m benchmarks.upstream_pools [--requests 5000] [--concurrency 64]``: each pool sends
the same chat POSTs to the loopback teacher (:class:`ProxyTeacherProcess`, its own process)
from this one process, and ``time.process_time()`` around the run gives the client's CPU ms per
request (the teacher's CPU is not counted). Pools run in turn, twice, on uvloop when installed
(as the proxy does). Not part of the suite: a measurement behind docs/proxy.md's numbers, never
asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time

from apidistill.proxy.raw_upstream import RawUpstream
from apidistill.proxy.upstream import _Aiohttp, _Httpx2
from apidistill.testing.proxy_teacher import ProxyTeacherProcess

BODY = json.dumps(
    {"model": "gpt-4o-mini", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}
).encode()
HEADERS = {"content-type": "application/json", "authorization": "Bearer sk-bench"}


async def _run(cls, url: str, n: int, concurrency: int) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    pool, left = cls(concurrency, 60.0), n  # opened in the loop it runs in (aiohttp needs one)

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            resp = await pool.send("POST", url, content=BODY, headers=HEADERS, params=None)
            await resp.read()
            await resp.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))  # warm the sockets
    left = n
    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    await pool.close()
    return cpu * 1000 / n, n / wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--requests", type=int, default=5000)
    ap.add_argument("--concurrency", type=int, default=64)
    args = ap.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    pools = {"raw": RawUpstream, "aiohttp": _Aiohttp, "httpx2": _Httpx2}
    print(f"load average before: {os.getloadavg()}")
    with ProxyTeacherProcess() as teacher:
        url = teacher.base_url.rstrip("/") + "/chat/completions"
        for rnd in range(2):
            for name, cls in pools.items():
                ms, rps = asyncio.run(_run(cls, url, args.requests, args.concurrency))
                print(f"round {rnd} {name:8s} {ms:.3f} CPU ms/request  {rps:,.0f} req/s")
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
