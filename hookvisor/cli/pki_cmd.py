"""`hookvisor pki`: a CA, host and client certificates for a lab or for tests."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from hookvisor.cli.common import UsageError, add_global_options, settings_from_args


def register(sub: Any) -> None:
    p = sub.add_parser("pki", help="create a CA and certificates (VDSM's layout) for a lab")
    cmds = p.add_subparsers(dest="pki_command", metavar="ACTION", required=True)
    init = cmds.add_parser("init", help="a CA (kept if present) and this host's certificate")
    add_global_options(init)
    init.add_argument("--dir", type=Path, help="PKI dir (default: the pki_dir setting, "
                      "/etc/pki/hookvisor)")
    init.add_argument("--host-name", action="append", default=[], metavar="NAME",
                      help="a DNS name or IP the host certificate is for (repeatable; "
                      "default localhost, 127.0.0.1, ::1); naming any issues it again")
    init.set_defaults(func=cmd_init)
    iss = cmds.add_parser("issue", help="a client certificate signed by the CA")
    add_global_options(iss)
    iss.add_argument("--dir", type=Path, help="PKI dir holding the CA")
    iss.add_argument("--out", type=Path, required=True, metavar="PREFIX",
                     help="writes PREFIX-cert.pem and PREFIX-key.pem (0600)")
    iss.add_argument("--cn", required=True, metavar="NAME", help="the client's name")
    iss.set_defaults(func=cmd_issue)


def _dir(args: argparse.Namespace) -> Path:
    if args.dir is not None:
        return Path(args.dir)
    return settings_from_args(args).pki_dir


def cmd_init(args: argparse.Namespace) -> int:
    from hookvisor.pki import PkiError, PkiLayout, init

    root = _dir(args)
    try:
        made_ca, made_host, host = init(root, args.host_name or None)
    except (OSError, PkiError) as e:
        raise UsageError(f"pki init {root}: {e}") from None
    layout = PkiLayout(root)
    print(f"CA {'created' if made_ca else 'kept'}: {layout.ca_cert}")
    print(f"host certificate {'issued' if made_host else 'kept'}: {host.cert} (key {host.key})")
    return 0


def cmd_issue(args: argparse.Namespace) -> int:
    from hookvisor.pki import PkiError, issue_client

    root = _dir(args)
    try:
        issued = issue_client(root, args.out, args.cn)
    except (OSError, PkiError) as e:
        raise UsageError(f"pki issue: {e}") from None
    print(f"{issued.cert} {issued.key}")
    return 0
