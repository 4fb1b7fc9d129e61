"""Take docs/screenshots/serve.png: `refseg serve` on loopback, driven by headless chromium.

    python docs/screenshots/take_serve_screenshot.py --model default --sample rocket \
        --threshold 0.5 "the white rocket in the middle" "the tower on the far left"

Needs playwright (extra ``test``) and /usr/bin/chromium.
"""
from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from playwright.sync_api import sync_playwright

CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
OUT = Path(__file__).resolve().parent / "serve.png"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("texts", nargs="+", help="expressions to add, in order")
    parser.add_argument("--model", default=None, help="checkpoint or shipped name (default: bundled)")
    parser.add_argument("--sample", default="rocket", help="sample photo to pick")
    parser.add_argument("--threshold", default="", help="default: the model's own")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [sys.executable, "-m", "refseg", "serve", "--port", str(port)]
    server = subprocess.Popen(command + (["--model", args.model] if args.model else []))
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                    break
            except httpx.TransportError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("the server did not start")
                time.sleep(0.2)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(f"http://127.0.0.1:{port}/")
            page.get_by_role("button", name=args.sample, exact=True).click()
            page.wait_for_selector('#figure[data-state="photo"]')
            if args.threshold:
                page.get_by_label("Threshold").fill(args.threshold)
            for count, text in enumerate(args.texts, start=1):
                page.get_by_label("Describe the region to segment").fill(text)
                page.get_by_role("button", name="Segment").click()
                page.wait_for_function(
                    f"document.querySelectorAll('#legend li').length == {count}"
                    " || !document.getElementById('error').hidden",
                    timeout=120_000,
                )
            page.screenshot(path=str(args.out))
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=15)
    print(args.out)


if __name__ == "__main__":
    main()
