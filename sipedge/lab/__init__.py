"""The loopback lab in-process: simulated Twilio gateways and PBX, and ``sipedge demo``.

Shell layer (asyncio, sockets): nothing in the sans-I/O core imports it.
``agent`` is the SIP user agent (UAS and UAC on one UDP socket), ``topology`` the lab's
addresses and the config the demo runs sipedge on, ``demo`` the scripted run.
"""

from sipedge.lab.agent import CallResult, UserAgent
from sipedge.lab.topology import LabAddresses, demo_config

__all__ = ["CallResult", "LabAddresses", "UserAgent", "demo_config"]
