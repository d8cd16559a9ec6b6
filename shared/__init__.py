"""Viva Relay's common library: metadata, keys, the streaming byte path, ledger and sinks.

Everything the Azure Functions triggers and the ``viva-relay`` CLI do is implemented here, so it
can be tested without the Functions host.
"""

__version__ = "0.1.0"
