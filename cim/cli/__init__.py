"""The ``cim`` command: dev (embedded cluster), route, server, client, status,
admin, bench.

A thin click layer: each command (a module of its own) reads flags and
``CIM_*`` variables through the shared option groups (:mod:`cim.cli.options`),
builds its process's settings with :mod:`cim.cli.configs`, sets up logging and
runs the library's apps (:mod:`cim.cli.runtime`). Errors are printed as one
line, never a traceback.
"""

from __future__ import annotations

import click

from cim.bench.cli import bench
from cim.cli.admin import admin
from cim.cli.client import client
from cim.cli.dev import dev
from cim.cli.route import route
from cim.cli.server import server
from cim.cli.status import status

__all__ = ["main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(package_name="cim")
def main() -> None:
    """cim: a distributed instant-messaging system on gRPC."""


for _command in (dev, route, server, client, status, admin, bench):
    main.add_command(_command)
