"""``python -m aidsafe.testing``: run the simulated OpenAI-compatible server until Ctrl-C."""

from __future__ import annotations

from ._sim import main

if __name__ == "__main__":
    main()
