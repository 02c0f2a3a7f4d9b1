"""Default gunicorn settings for the gateway: ``gunicorn -c gateway/gunicorn_conf.py gateway.wsgi:app``.

Requests mostly wait on the dispatcher, so each process runs threads (gthread). Override with:
``TORCHGATE_BIND`` (default 127.0.0.1:8000), ``TORCHGATE_GATEWAY_PROCESSES`` (default 1),
``TORCHGATE_GATEWAY_THREADS`` (default 32), ``TORCHGATE_GATEWAY_QUEUE`` (requests waiting for a thread, per
process, before the next get 503 at once; default 4 x threads), ``TORCHGATE_GATEWAY_GRACEFUL_SECONDS``
(default 30).
`torchgate serve` loads this file too (``--config python:gateway.gunicorn_conf``): the worker class and the
timeout are set here only; its flags set the bind address, processes, threads and graceful timeout.
"""

from __future__ import annotations

import os

from gunicorn.glogging import Logger as _Logger

from gateway.access_log import logconfig as _logconfig  # not "logconfig": gunicorn would read it as a setting
from gateway.multiproc import child_exit, on_starting  # noqa: F401 - gunicorn hooks (PROMETHEUS_MULTIPROC_DIR)

bind = [os.environ.get("TORCHGATE_BIND", "127.0.0.1:8000")]
worker_class = (
    "gateway.admission.AdmittingThreadWorker"  # gthread; the excess over TORCHGATE_GATEWAY_QUEUE gets 503
)
workers = int(os.environ.get("TORCHGATE_GATEWAY_PROCESSES", "1"))
threads = int(os.environ.get("TORCHGATE_GATEWAY_THREADS", "32"))
graceful_timeout = int(os.environ.get("TORCHGATE_GATEWAY_GRACEFUL_SECONDS", "30"))
timeout = 60  # a silent worker process is restarted after this long; requests end at their deadline before
keepalive = 5
# Connections per process; near it, idle kept-alive ones are closed first (gateway.frontdoor).
worker_connections = int(os.environ.get("TORCHGATE_GATEWAY_CONNECTIONS", "1000"))
backlog = 2048
preload_app = False  # each process builds its app (and its ZeroMQ sockets) after the fork
daemon = False  # supervisord and tests manage the process
control_socket_disable = True  # gunicorn 23+ would share one ~/.gunicorn/gunicorn.ctl between every instance
accesslog = None


class QuietAccessLogger(_Logger):  # type: ignore[misc]  # gunicorn is untyped
    """gunicorn's logger without its access log: the gateway writes its own access line (gateway.access_log).

    With ``logconfig_dict`` set, gunicorn would otherwise build every request's access-log atoms and drop
    them.
    """

    def _compute_access_log_enabled(self) -> bool:
        return False


logger_class = QuietAccessLogger
errorlog = "-"
loglevel = os.environ.get("TORCHGATE_LOG_LEVEL", "info")
# Plain lines, or JSON lines with TORCHGATE_LOG_FORMAT=json; lines logged during a request carry its id.
logconfig_dict = _logconfig(loglevel, os.environ.get("TORCHGATE_LOG_FORMAT", "text"))
