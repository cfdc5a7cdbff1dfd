"""Live migration through the agents (no hooks) against the same libvirt migration
called directly, between qemu:///system and the second libvirt host
(scripts/libvirtd2.sh), with the tiny booting guest under TCG (SPEC §5).

Each round boots two guests of the same XML on host 1 (one created through the
source agent, one with libvirt-python), waits for both to be ready, then
migrates each to host 2, alternating which goes first:
  direct: virDomainMigrateToURI3(uri2, {URI: tcp://127.0.0.1}, LIVE|PEER2PEER);
  agents: migrate({vmId, dst: the destination agent}) on the source agent, timed
          until its migrateStatus says done (polled every 10 ms): the source's
          before_ hooks (none), the TLS handshake and migrationCreate on the
          destination agent, libvirt's migration, the source's after_ work.
Both agents talk mutual TLS with a lab PKI. Host 2 cannot migrate back to
qemu:///system (its own mount namespace makes that URI itself), so each round
boots fresh guests. The ratio is median(agents) / median(direct); goal <= 1.10.

    python bench/migration.py [ROUNDS]     (root; default 5 rounds)
"""

from __future__ import annotations

import contextlib
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import libvirt

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

import api  # noqa: E402
import guest  # type: ignore[import-not-found]  # noqa: E402

POLL = 0.01


def _status(agent: api.Agent, vm_id: str) -> dict[str, Any]:
    stats: dict[str, Any] = agent.call("migrateStatus", vm_id)["migrationStats"]
    return stats


def main(rounds: int) -> float:
    uri2 = guest.start_second_host()
    tiny = guest.build_guest()
    tmp = Path(tempfile.mkdtemp(prefix="hv-bench-mig-"))
    tmp.chmod(0o755)
    config = tmp / "agent.toml"
    config.write_text(f'storage_dirs = ["{tmp}", "{tiny.kernel.parent}"]\n')
    pki = api.Pki(tmp / "pki")
    one = libvirt.open("qemu:///system")
    two = libvirt.open(uri2)
    src = api.Agent("qemu:///system", pki, ["--config", str(config)])
    dst = api.Agent(uri2, pki, ["--config", str(config)])
    params = {libvirt.VIR_MIGRATE_PARAM_URI: "tcp://127.0.0.1"}
    flags = libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PEER2PEER
    times: dict[str, list[float]] = {"direct": [], "agents": []}
    try:
        for r in range(rounds):
            direct_id, agent_id = str(uuid.uuid4()), str(uuid.uuid4())
            dlog, alog = tmp / f"d{r}.log", tmp / f"a{r}.log"
            dom = one.createXML(tiny.xml(f"hvbench-mig-d-{direct_id[:6]}", dlog,
                                         uuid=direct_id), 0)
            src.call("create", {"xml": tiny.xml(f"hvbench-mig-a-{agent_id[:6]}", alog,
                                                uuid=agent_id)})
            guest.wait_marker(dlog, 180)
            guest.wait_marker(alog, 180)

            def direct(dom: Any = dom) -> None:
                dom.migrateToURI3(uri2, params, flags)

            def agents(vm_id: str = agent_id) -> None:
                src.call("migrate", {"vmId": vm_id, "dst": f"127.0.0.1:{dst.port}",
                                     "method": "online"})
                while True:
                    state = _status(src, vm_id)
                    if state["state"] == "done":
                        return
                    if state["state"] not in ("starting", "running"):
                        raise SystemExit(f"agent migration failed: {state}")
                    time.sleep(POLL)

            sides = [("direct", direct), ("agents", agents)]
            for side, run in (sides if r % 2 == 0 else sides[::-1]):
                start = time.perf_counter()
                run()
                times[side].append(time.perf_counter() - start)
            two.lookupByUUIDString(direct_id).destroy()
            # The destination agent has it now (Up once its after_ work is done).
            while dst.call("list", False, [agent_id])["vmList"][0]["status"] != "Up":
                time.sleep(POLL)
            dst.call("destroy", agent_id)
            print(f"round {r + 1}: direct {times['direct'][-1]:.2f}s, "
                  f"agents {times['agents'][-1]:.2f}s", flush=True)
    finally:
        src.close()
        dst.close()
        for conn in (one, two):
            for d in conn.listAllDomains():
                if d.name().startswith("hvbench-mig-"):
                    with contextlib.suppress(libvirt.libvirtError):
                        d.destroy()
            conn.close()
    d, a = statistics.median(times["direct"]), statistics.median(times["agents"])
    print(f"tiny guest live migration host 1 -> host 2 (x{rounds}): libvirt {d:.2f}s, "
          f"agents {a:.2f}s (means {statistics.mean(times['direct']):.2f}s / "
          f"{statistics.mean(times['agents']):.2f}s)")
    return a / d


if __name__ == "__main__":
    ratio = main(int(sys.argv[1]) if len(sys.argv) > 1 else 5)
    print(f"migration_ratio={ratio:.2f}")
