"""Offline command-line tools, apart from the library they drive (``python -m sat.tools.<name>``)."""
