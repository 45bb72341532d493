"""``buildgraph trust``: the signing keys the team cache trusts (implemented beside ``remote``
in :mod:`buildgraph.cli.remote`)."""

from __future__ import annotations

from buildgraph.cli.remote import TRUST_HELP as HELP  # noqa: F401 - the command's interface
from buildgraph.cli.remote import add_trust_arguments as add_arguments  # noqa: F401
from buildgraph.cli.remote import trust_main as main  # noqa: F401
