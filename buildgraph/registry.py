"""Every built-in registration in one place: step kinds, runtimes, shared record areas and
commands, each ``name -> "module[:attribute]"``, imported only when used.

Adding a backend is one line in each table it needs (docs/architecture.md, "Adding a
backend"); plugins add their kinds and runtimes through entry points instead
(``buildgraph.executors``, ``buildgraph.runtimes``). Strings, not imports: the engine reaches
backends only through these, and reading this module costs next to nothing.
"""

from __future__ import annotations

COMMANDS = {
    "run": "buildgraph.cli.run",
    "plan": "buildgraph.cli.plan",
    "repro": "buildgraph.cli.repro",
    "graph": "buildgraph.cli.graph",
    "cache": "buildgraph.cli.cache",
    "tune-db": "buildgraph.backends.tvm.tunedb_cli",
    "remote": "buildgraph.cli.remote",
    "trust": "buildgraph.cli.trust",
    "schema": "buildgraph.cli.schema",
    "kinds": "buildgraph.cli.kinds",
    "log": "buildgraph.cli.log",
    "report": "buildgraph.cli.report",
}
"""Command -> its module (``HELP``, ``add_arguments(parser)``, ``main(args) -> int``; see
:mod:`buildgraph.cli`)."""
