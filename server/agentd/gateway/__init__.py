"""The HTTP/JSON gateway serving the legacy REST routes (see app.py)."""
