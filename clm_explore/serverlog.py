"""The server's log: lines of clm-explore's own on stderr, with a time, under ``streamlit run`` too.

Why: Streamlit's loggers have handlers of their own and do not propagate, the root logger has none, and Python's
last resort prints warnings alone, without a time; so the app's jobs and checks wrote nothing an administrator could
read (the operations review).
"""

from __future__ import annotations

import logging
import sys
import threading

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_SETUP = threading.Lock()


def server_logger(name: str = "clm_explore") -> logging.Logger:
    """``name``'s logger (under 'clm_explore'), whose lines reach stderr at INFO and up: through a handler a caller set
    up (a script's ``logging.basicConfig``, an embedding app's), else through one added here to 'clm_explore', once
    per process."""
    top = logging.getLogger("clm_explore")
    with _SETUP:
        if not top.hasHandlers():  # theirs (on it or the root), or the one added earlier
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter(LOG_FORMAT))
            top.addHandler(handler)
        if top.level == logging.NOTSET:  # the root's WARNING would drop a job's queued, started and finished lines
            top.setLevel(logging.INFO)
    return logging.getLogger(name)
