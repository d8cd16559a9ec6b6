"""The ``viva-relay`` operator CLI (a thin shell over the ``shared`` library)."""
