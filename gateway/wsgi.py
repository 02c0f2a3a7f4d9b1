"""The WSGI entry point: ``gunicorn -c gateway/gunicorn_conf.py gateway.wsgi:app``, or ``flask --app
gateway.wsgi run``.

Settings come from ``TORCHGATE_*`` variables (see :class:`gateway.config.GatewayConfig`), read when gunicorn
or flask loads this module, which is the process's start-up.
"""

from __future__ import annotations

import logging

from gateway import heap
from gateway.app import create_app
from gateway.config import GatewayConfig

if not logging.getLogger().handlers:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s gateway[%(process)d] %(levelname)s %(message)s"
    )

config = GatewayConfig.from_env()
heap.keep_freed(config.heap_keep_bytes)
app = create_app(config)
