"""Developer tools: local HTTPS stand-ins for Azure services that have no emulator."""
