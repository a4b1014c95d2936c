"""sipedge: a SIP signalling edge proxy for Twilio Interconnect."""

__version__ = "0.1.0"
