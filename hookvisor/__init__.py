"""hookvisor: a per-host virtualization agent with a VDSM-compatible hook engine."""

__version__ = "0.1.0"
