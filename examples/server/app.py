"""A runnable example: the vramgate generation server (``python examples/server/app.py`` or ``uvicorn app:app``).

Configure the gate with ``VRAMGATE_*`` variables or ``VRAMGATE_CONFIG=gate.toml``; without a GPU, simulate one:
``VRAMGATE_DEVICES__SIMULATE='["RTX4090-24GB"]' VRAMGATE_DEVICES__USE_REAL_GPUS=false python examples/server/app.py``.
"""

from __future__ import annotations

import os

from vramgate.config import load_config
from vramgate.server import ServerSettings, create_app
from vramgate.server.app import serve

config = load_config(os.environ.get("VRAMGATE_CONFIG"))
app = create_app(config, settings=ServerSettings())

if __name__ == "__main__":
    # The [server] section's timeouts and connection limit, and a drain on SIGINT or SIGTERM (queued requests'
    # streams end, running ones stop) before uvicorn stops: plain ``uvicorn app:app`` has none of them.
    serve(app, host="127.0.0.1", port=int(os.environ.get("PORT", "8000")), limits=config.server)
