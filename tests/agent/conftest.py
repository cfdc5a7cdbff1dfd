"""Agent tests: none may leave a domain behind on the in-process test driver."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from hookvisor.agent.core import Agent
from hookvisor.agent.hookcalls import HookCalls
from hookvisor.config import Settings
from hookvisor.hooks.records import RunRecords
from hookvisor.hooks.runner import HookRunner, RunnerConfig
from hookvisor.props.registry import PropertyRegistry
from hookvisor.rpc.xmlrpc import Dispatcher
from hookvisor.virt.host import Host

TEST_URI = "test:///default"


@pytest.fixture(autouse=True)
def _no_leaked_domains(test_driver_leak_guard: None) -> None:
    pass


@dataclass
class DirectAgent:
    """An Agent built as `serve` builds it, without a transport: verbs called as methods."""

    agent: Agent
    dispatcher: Dispatcher
    settings: Settings
    records: RunRecords
    images: Path

    def call(self, verb: str, *args: Any) -> dict[str, Any]:
        """What a client gets: the status struct (and payload) of one verb."""
        return self.dispatcher._call(verb, args)


@pytest.fixture
def direct_agent(dirs: Any) -> Iterator[Callable[..., DirectAgent]]:
    made: list[tuple[DirectAgent, PropertyRegistry]] = []

    def make(**overrides: Any) -> DirectAgent:
        images = dirs.root / "images"
        images.mkdir(exist_ok=True)
        values: dict[str, Any] = {"libvirt_uri": TEST_URI, "hooks_dir": dirs.hooks,
                                   "state_dir": dirs.state, "run_dir": dirs.run,
                                   "storage_dirs": (images,), **overrides}
        settings = replace(Settings(), **values)
        records = RunRecords(dirs.state / "hookruns.sqlite")
        props = PropertyRegistry(dirs.state / "properties.sqlite", "4.8")
        runner = HookRunner(RunnerConfig.from_settings(settings), records)
        agent = Agent(Host(TEST_URI), HookCalls(runner), props, settings.run_dir, "4.8", records,
                      settings=settings)
        agent.recover()
        direct = DirectAgent(agent, Dispatcher(agent), settings, records, images)
        made.append((direct, props))
        return direct

    yield make
    for direct, props in made:
        direct.agent.close()
        direct.records.close()
        props.close()
