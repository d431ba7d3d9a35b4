"""The checks of protocol 5, one module each: its constants, its wording (TEXT) and the
functions that measure it and decide its verdict (analysis/protocol.py assembles them)."""
