"""``python -m viva_relay`` runs the CLI."""

from viva_relay.cli.main import main

raise SystemExit(main())
