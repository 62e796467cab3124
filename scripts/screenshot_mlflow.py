"""Screenshot of the MLflow UI's chart comparison of runs, in headless Chromium, for docs/outputs.md.

    .venv/bin/mlflow ui --backend-store-uri sqlite:///mlflow.db --port 5078 &
    .venv/bin/python scripts/screenshot_mlflow.py docs/img/mlflow_compare.png [--filter "/miou"] [--height 1100]

Opens the experiment's "Training runs" page in chart mode, restricted to the `__default__` runs, closes the assistant
panel, types `--filter` into the chart search box (so only those metrics are charted: one bar per run), and saves the
page. Needs Debian's `chromium`; drives it over the DevTools protocol (the `websockets` package, which mlflow brings)
because a plain `chromium --screenshot` cannot type into the page.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import websockets

DEBUG_PORT = 9333


async def capture(page_url: str, query: str, width: int, height: int, out: Path) -> None:
    targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{DEBUG_PORT}/json"))
    page = next(t for t in targets if t["type"] == "page")
    async with websockets.connect(page["webSocketDebuggerUrl"], max_size=None) as ws:
        ids = iter(range(1, 1_000_000))

        async def call(method: str, **params: Any) -> dict[str, Any]:
            key = next(ids)
            await ws.send(json.dumps({"id": key, "method": method, "params": params}))
            while True:
                message = json.loads(await ws.recv())
                if message.get("id") == key:
                    return message.get("result", {})

        async def evaluate(expression: str) -> Any:
            result = await call("Runtime.evaluate", expression=expression, returnByValue=True)
            return result.get("result", {}).get("value")

        await call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)
        await call("Page.navigate", url=page_url)
        await asyncio.sleep(12)  # the runs and their metrics load
        await evaluate("[...document.querySelectorAll('button')].filter(b => "
                       "(b.getAttribute('aria-label') || '').toLowerCase().includes('close')).forEach(b => b.click())")
        focused = await evaluate("(() => { const box = document.querySelector("
                                 "'input[placeholder=\"Search metric charts\"]'); if (!box) return false; "
                                 "box.focus(); return true })()")
        if not focused:
            raise RuntimeError(f"{page_url}: no chart search box (is it the runs page in chart mode?)")
        await call("Input.insertText", text=query)
        await asyncio.sleep(4)
        shot = await call("Page.captureScreenshot", format="png")
        out.write_bytes(base64.b64decode(shot["data"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--server", default="http://127.0.0.1:5078")
    parser.add_argument("--experiment-id", default="1")
    parser.add_argument("--runs", default="__default__%", help="run-name LIKE pattern of the runs to compare")
    parser.add_argument("--filter", default="/miou", help="text typed into the chart search box")
    parser.add_argument("--width", type=int, default=1600)
    parser.add_argument("--height", type=int, default=1100)
    args = parser.parse_args()
    search = urllib.parse.quote(f"attributes.run_name LIKE '{args.runs}'")
    page_url = f"{args.server}/#/experiments/{args.experiment_id}/runs?compareRunsMode=CHART&searchFilter={search}"
    chromium = subprocess.Popen(["chromium", "--headless", "--no-sandbox", "--disable-gpu",
                                 "--disable-background-networking", f"--window-size={args.width},{args.height}",
                                 f"--remote-debugging-port={DEBUG_PORT}", "about:blank"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(50):  # until the DevTools endpoint answers
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{DEBUG_PORT}/json")
                break
            except OSError:
                time.sleep(0.2)
        asyncio.run(capture(page_url, args.filter, args.width, args.height, args.out))
    finally:
        chromium.terminate()
    print(f"wrote {args.out}")  # noqa: T201 - the script's output


if __name__ == "__main__":
    main()
