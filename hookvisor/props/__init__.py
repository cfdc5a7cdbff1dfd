"""Custom properties: engine-config syntax, a per-cluster-version store, checks.

See docs/custom-properties.md. The agent uses `PropertyRegistry`.
"""

from hookvisor.props.errors import DefinitionError, PropertyError
from hookvisor.props.registry import PropertyRegistry

__all__ = ["DefinitionError", "PropertyError", "PropertyRegistry"]
