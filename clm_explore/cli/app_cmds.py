"""``clm-explore app``: the Streamlit app, started from wherever the package is installed."""

from __future__ import annotations

import argparse
import os
import re
import sys
import tomllib
from pathlib import Path
from typing import Any

from clm_explore.cli import UserError

APP_SCRIPT = Path(__file__).resolve().parent.parent / "ui" / "app" / "app.py"
"""The app's main script; its pages sit beside it in app_pages/, its server settings in .streamlit/config.toml."""
APP_CONFIG = APP_SCRIPT.parent / ".streamlit" / "config.toml"


def register(subparsers: Any) -> None:
    """Add the ``app`` sub-command."""
    p = subparsers.add_parser(
        "app", help="start the app (a Streamlit server) for browsers",
        description="Start the app's server: open the address it prints in a browser; Ctrl+C stops it. The server "
        "listens on every interface of this machine, with no login (--address 127.0.0.1 keeps it to this machine). "
        "Its settings (no error details or Deploy button in the browser, no usage statistics, plain logs) come from "
        "the package's ui/app/.streamlit/config.toml; other Streamlit settings are read from STREAMLIT_* variables. "
        "Runs go to ./runs or $CLM_EXPLORE_RUNS.")
    p.add_argument("--port", type=int, default=8501, help="the port to serve on")
    p.add_argument("--address", default=None, metavar="ADDR",
                   help="the interface to listen on (default: all of them)")
    p.set_defaults(func=run_app, light=True)


def run_app(args: argparse.Namespace) -> int:
    if not 1 <= args.port <= 65535:
        raise UserError(f"--port {args.port} must be from 1 to 65535.")
    if not APP_SCRIPT.is_file():
        raise UserError(f"The app is not installed with this package ({APP_SCRIPT} is missing); reinstall clm-explore.")
    print(f"clm-explore: open http://{browser_host(args.address)}:{args.port} in a browser (Ctrl+C stops the app)",
          flush=True)
    os.execv(sys.executable, app_command(args.port, args.address))  # the server takes this process: signals reach it
    return 0  # pragma: no cover - execv does not return


def app_command(port: int, address: str | None = None) -> list[str]:
    """The command line that starts the app's server: ``streamlit run`` on the package's script, with its settings
    passed as flags as well (a Streamlit that reads no config beside the script, or a config in the working folder
    that says otherwise, must not turn error details or the Deploy button back on), but for those an operator set in
    a ``STREAMLIT_*`` variable. ``browser.serverAddress``: one
    URL printed, and no lookup of the machine's external address (offline it printed an error-like line; online it
    showed a presenter's public address: the demo review)."""
    flags = [f"--{section}.{name}={_flag_value(value)}" for section, values in app_settings().items()
             for name, value in values.items() if streamlit_variable(section, name) not in os.environ]
    command = [sys.executable, "-m", "streamlit", "run", str(APP_SCRIPT), *flags, "--server.headless=true",
               f"--server.port={port}", f"--browser.serverAddress={browser_host(address)}"]
    return command + ([f"--server.address={address}"] if address else [])


def app_settings() -> dict[str, dict[str, Any]]:
    """The app's server settings (ui/app/.streamlit/config.toml) by section."""
    with APP_CONFIG.open("rb") as file:
        return tomllib.load(file)


def browser_host(address: str | None) -> str:
    """The host a browser opens: the interface the server listens on, where one was named, else localhost (all
    interfaces, or a loopback one)."""
    return address if address and address not in ("0.0.0.0", "::", "127.0.0.1", "::1", "localhost") else "localhost"


def streamlit_variable(section: str, name: str) -> str:
    """The variable Streamlit reads a setting from (``client.showErrorDetails``: STREAMLIT_CLIENT_SHOW_ERROR_DETAILS).
    A flag would override it, so a setting given so is passed on as the variable says (the diff review)."""
    return f"STREAMLIT_{section}_{re.sub(r'(?<!^)(?=[A-Z])', '_', name)}".upper()


def _flag_value(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)
