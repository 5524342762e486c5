"""A runnable example: the vramgate generation server (``python examples/server/app.py`` or ``uvicorn app:app``).

Configure the gate with ``VRAMGATE_*`` variables or ``VRAMGATE_CONFIG=gate.toml``; without a GPU, simulate one:
``VRAMGATE_DEVICES__SIMULATE='["RTX4090-24GB"]' VRAMGATE_DEVICES__USE_REAL_GPUS=false python examples/server/app.py``.
"""

from __future__ import annotations

import os

from vramgate.config import load_config
from vramgate.server import ServerSettings, create_app

config = load_config(os.environ.get("VRAMGATE_CONFIG"))
app = create_app(config, settings=ServerSettings())

if __name__ == "__main__":
    import uvicorn

    from vramgate.server.connections import uvicorn_config

    # The [server] section's timeouts and connection limit (plain ``uvicorn app:app`` has neither).
    port = int(os.environ.get("PORT", "8000"))
    uvicorn.Server(uvicorn_config(app, host="127.0.0.1", port=port, limits=config.server)).run()
