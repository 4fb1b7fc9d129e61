"""`refseg serve`: the HTTP API and web page (FastAPI + uvicorn; extra ``serve``)."""
from __future__ import annotations

from typing import Optional

import typer

from refseg.serve.limits import ServerLimits

_DEFAULTS = ServerLimits()

def register(app: typer.Typer) -> None:
    """Add ``serve`` to the `refseg` app."""
    app.command("serve")(serve)


def serve(
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on (0.0.0.0 exposes it to the network)."),
    port: int = typer.Option(8000, "--port", min=1, max=65535, help="TCP port."),
    model: Optional[str] = typer.Option(
        None, "--model", "-m", envvar="REFSEG_MODEL",
        help="Checkpoint file, run folder or shipped model name (default: the bundled model).",
    ),
    runtime: str = typer.Option("torch", "--runtime", help="torch or onnx (refseg.runtime)."),
    max_upload_mb: float = typer.Option(_DEFAULTS.max_upload_bytes / 2**20, "--max-upload-mb", min=0.01, help="Largest request body, in MB."),
    max_pixels: int = typer.Option(_DEFAULTS.max_pixels, "--max-pixels", min=1, help="Largest photo, in pixels (refused before decoding)."),
    max_texts: int = typer.Option(_DEFAULTS.max_texts, "--max-texts", min=1, help="Most expressions in one request."),
    queue: int = typer.Option(_DEFAULTS.queue_size, "--queue", min=1, help="Requests admitted at once (running + waiting); more get HTTP 503."),
    read_timeout: float = typer.Option(_DEFAULTS.read_timeout_s, "--read-timeout", help="Seconds a request may take to upload; slower ones get HTTP 408."),
) -> None:
    """Serve POST /segment, the web page at / and GET /health (extra 'serve')."""
    from refseg.extras import require

    require("serve", "'refseg serve'")
    import uvicorn

    from refseg.runtime import check_runner

    check_runner(runtime)  # before the (slow) model load

    from refseg.api import Segmenter
    from refseg.limits import upload_bytes
    from refseg.serve.app import create_app, describe_model

    limits = ServerLimits(
        max_upload_bytes=upload_bytes(max_upload_mb),
        max_pixels=max_pixels,
        max_texts=max_texts,
        queue_size=queue,
        read_timeout_s=read_timeout,
    )
    segmenter = Segmenter.from_pretrained(model, runtime=runtime)
    app = create_app(segmenter, limits, describe_model(segmenter, runtime))
    typer.echo(f"refseg: serving {segmenter.model.name} on http://{host}:{port}/ (Ctrl-C stops)")
    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=5)
