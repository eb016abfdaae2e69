"""``python -m hieravid ...`` runs the ``hieravid`` command (``accelerate launch -m hieravid eval ...`` uses this)."""

from hieravid.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
