"""Shim so that VDSM hooks can `from vdsm.hook import hooking`."""
