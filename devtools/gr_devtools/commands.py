"""The gr-consumer commands this distribution adds (entry-point group `gr_consumer.commands`).

Each is a (module, one-line help) pair: gr-consumer lists them without importing the
tools, and imports the module only when its command is chosen.
"""

from __future__ import annotations

DEMO = ("gr_devtools.demo", "the whole flow on this machine, no set-up")
SIMULATE_API = ("gr_devtools.simulator", "run the S2S API simulator as a server")
