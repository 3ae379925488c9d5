"""The command-line programs: ``python -m sockdemo server|client|bench|cert``
and the four scripts of the original example.

One module per family: :mod:`.commands` (the parsers and entry points),
:mod:`.server` (start and serve), :mod:`.workers` and :mod:`.worker`
(``--workers``), :mod:`.tools` (client, bench, cert), :mod:`.options` (the
flags) and :mod:`.output` (what is printed, and signals).
"""

from .commands import basic_client_script, basic_server_script, client_script, main, server_script

__all__ = ["basic_client_script", "basic_server_script", "client_script", "main", "server_script"]
