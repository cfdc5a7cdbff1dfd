"""The hook engine: VDSM's hook contract, bounded by timeouts, recorded, validated.

Knows nothing of libvirt, RPC or the agent. Entry point: `runner.HookRunner`.
"""
