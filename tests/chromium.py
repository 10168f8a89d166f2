"""A real headless Chromium (Debian's ``chromium`` package, see system.mk), driven over the DevTools protocol.

:class:`Chromium` starts ``/usr/bin/chromium`` with a fresh empty profile, no
network of its own (the machine's is closed anyway), and a DevTools port on
127.0.0.1; :class:`Page` speaks the protocol over aiohttp's WebSocket client and
records console errors, uncaught exceptions and every network request, so a test
can assert a page renders cleanly and fetches nothing.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp

__all__ = ["CHROMIUM", "Chromium", "Page"]

CHROMIUM = Path("/usr/bin/chromium")
#: Flags every start uses: headless, no sandbox (root in CI), nothing that reaches out.
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0")
_LISTENING = re.compile(rb"DevTools listening on (ws://\S+)")
_START_BOUND = 120.0  # a bound against a hang on a loaded machine, not a speed assertion


class Chromium:
    """``async with Chromium() as browser: page = await browser.page()``."""

    def __init__(self) -> None:
        self._profile = Path(tempfile.mkdtemp(prefix="fg-chromium-"))
        self._proc: asyncio.subprocess.Process | None = None
        self._http = ""
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Chromium:
        if not CHROMIUM.exists():
            raise RuntimeError(f"{CHROMIUM} is missing: `make test` installs the Debian package chromium"
                               " (system.mk), or run `make debs`")
        self._proc = await asyncio.create_subprocess_exec(
            str(CHROMIUM), *FLAGS, f"--user-data-dir={self._profile}", "--window-size=1280,900",
            "about:blank",
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        assert self._proc.stderr is not None
        url = await asyncio.wait_for(self._listening(self._proc.stderr), _START_BOUND)
        self._http = "http://" + url.split("//", 1)[1].split("/", 1)[0]
        self._session = aiohttp.ClientSession()
        return self

    @staticmethod
    async def _listening(stream: asyncio.StreamReader) -> str:
        seen = b""
        while line := await stream.readline():
            seen += line
            if m := _LISTENING.search(line):
                # Keep draining stderr so that chromium never blocks on a full pipe.
                asyncio.get_running_loop().create_task(_drain(stream))
                return m.group(1).decode()
        tail = seen[-2000:].decode(errors="replace")
        raise RuntimeError(f"chromium exited before DevTools listened: {tail}")

    async def page(self) -> Page:
        assert self._session is not None
        async with self._session.get(f"{self._http}/json/list") as resp:
            targets = await resp.json()
        target = next(t for t in targets if t.get("type") == "page")
        ws = await self._session.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0)
        page = Page(ws)
        await page.start()
        return page

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self._session is not None:
            await self._session.close()
        if self._proc is not None and self._proc.returncode is None:
            self._proc.terminate()
            try:
                await asyncio.wait_for(self._proc.wait(), 30)
            except TimeoutError:
                self._proc.kill()
                await self._proc.wait()
        shutil.rmtree(self._profile, ignore_errors=True)


async def _drain(stream: asyncio.StreamReader) -> None:
    with contextlib.suppress(Exception):
        while await stream.read(65536):
            pass


class Page:
    """One page target: commands by ``call``, events recorded as they come."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._waiters: list[tuple[str, asyncio.Future[dict[str, Any]]]] = []
        self.errors: list[str] = []
        self.requests: list[str] = []
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._reader = asyncio.get_running_loop().create_task(self._read())
        for domain in ("Runtime", "Log", "Network", "Page"):
            await self.call(f"{domain}.enable")

    async def _read(self) -> None:
        async for msg in self._ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(msg.data)
            if "id" in data:
                fut = self._pending.pop(data["id"], None)
                if fut is not None and not fut.done():
                    fut.set_result(data)
                continue
            self._event(data.get("method", ""), data.get("params") or {})

    def _event(self, method: str, params: dict[str, Any]) -> None:
        if method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails") or {}
            exception = details.get("exception") or {}
            self.errors.append(str(exception.get("description") or details.get("text")))
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            args = params.get("args") or []
            self.errors.append(" ".join(str(a.get("value", a.get("description", ""))) for a in args))
        elif method == "Log.entryAdded" and (params.get("entry") or {}).get("level") == "error":
            self.errors.append(str(params["entry"].get("text")))
        elif method == "Network.requestWillBeSent":
            self.requests.append(str((params.get("request") or {}).get("url")))
        for name, fut in list(self._waiters):
            if name == method and not fut.done():
                fut.set_result(params)
                self._waiters.remove((name, fut))

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        msg_id = next(self._ids)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[msg_id] = fut
        await self._ws.send_str(json.dumps({"id": msg_id, "method": method, "params": params}))
        answer = await fut
        if "error" in answer:
            raise RuntimeError(f"{method}: {answer['error']}")
        return dict(answer.get("result") or {})

    async def goto(self, url: str) -> None:
        """Navigate and wait for the load event."""
        loaded: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiters.append(("Page.loadEventFired", loaded))
        await self.call("Page.navigate", url=url)
        await loaded

    async def eval(self, expression: str) -> Any:
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True,
                                 awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def hover(self, x: float, y: float) -> None:
        await self.call("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y)

    async def screenshot(self, path: Path) -> int:
        """A PNG of the whole page; returns its size in bytes."""
        shot = await self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        data = base64.b64decode(shot["data"])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return len(data)
