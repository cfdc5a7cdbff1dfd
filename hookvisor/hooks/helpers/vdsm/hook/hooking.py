"""`from vdsm.hook import hooking` for VDSM hooks: the same module as `import hooking`."""

import sys

import hooking as _hooking

# One module object under both names, so that state and monkeypatching agree.
sys.modules[__name__] = _hooking
