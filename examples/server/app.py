"""A runnable example: the vramgate generation server (``python examples/server/app.py`` or ``uvicorn app:app``).

Configure the gate with ``VRAMGATE_*`` variables or ``VRAMGATE_CONFIG=gate.toml``; without a GPU, simulate one:
``VRAMGATE_DEVICES__SIMULATE='["RTX4090-24GB"]' VRAMGATE_DEVICES__USE_REAL_GPUS=false python examples/server/app.py``.
"""

from __future__ import annotations

import os

from vramgate.config import load_config
from vramgate.server import ServerSettings, create_app

app = create_app(load_config(os.environ.get("VRAMGATE_CONFIG")), settings=ServerSettings())

if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app, host="127.0.0.1", port=int(os.environ.get("PORT", "8000")))
