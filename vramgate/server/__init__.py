"""An HTTP generation server embedding one gate (``pip install -e '.[server]'`` from a clone; ``vramgate serve``).

:func:`create_app` builds the FastAPI app (FastAPI is imported only then); :func:`open_service` is the same
server without HTTP, for embedding in another framework.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vramgate.server.runners import RUNNER_KINDS, Runner, RunnerKind, make_runner
from vramgate.server.service import GenerationService, ServerSettings, open_service

if TYPE_CHECKING:
    from fastapi import FastAPI


def create_app(*args: Any, **kwargs: Any) -> FastAPI:
    """The example server's ASGI app; see :func:`vramgate.server.app.create_app`."""
    try:
        from vramgate.server.app import create_app as build
    except ImportError as error:
        from vramgate.errors import ConfigError

        hint = "pip install -e '.[server]' from a clone of vramgate"
        raise ConfigError(f"the server needs FastAPI: {hint} ({error})") from None
    return build(*args, **kwargs)


__all__ = [
    "RUNNER_KINDS",
    "GenerationService",
    "Runner",
    "RunnerKind",
    "ServerSettings",
    "create_app",
    "make_runner",
    "open_service",
]
