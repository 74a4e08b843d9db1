"""`relayjob-operator sandbox up|down|env|status [--dir DIR]`.

Also runnable as `python -m devtools.cli ...`. Progress goes to stderr; stdout carries
only what a script would consume (the env file for `env`, pids for `status`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from devtools.binaries import BinaryError
from devtools.pki import PKIError
from devtools.sandbox import (
    COMPONENTS,
    DEFAULT_CRD,
    DEFAULT_SECRET_POLICY,
    CommandError,
    Sandbox,
    SandboxError,
)
from devtools.servers import ServerError

DEFAULT_DIR = Path(".sandbox")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="relayjob-operator sandbox",
        description="Run etcd + kube-apiserver, redis-server and PostgreSQL locally for "
        "development and tests.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    def with_dir(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument(
            "--dir",
            type=Path,
            default=DEFAULT_DIR,
            help="sandbox directory (default: .sandbox under the current directory)",
        )
        return sub

    up = with_dir("up", "start every server (reusing healthy ones) and write DIR/env")
    up.add_argument(
        "--crd",
        type=Path,
        default=DEFAULT_CRD,
        help=f"CRD manifest to install (default: {DEFAULT_CRD})",
    )
    up.add_argument(
        "--no-secret-policy",
        action="store_true",
        help=f"do not install the Secret-reference admission policy ({DEFAULT_SECRET_POLICY.name})",
    )
    up.add_argument(
        "--only",
        action="append",
        choices=COMPONENTS,
        help="start only these components (repeatable; default: all)",
    )
    up.add_argument("--no-helm", action="store_true", help="do not build helm if it is not already cached")
    down = with_dir("down", "stop every server; data is kept unless --purge")
    down.add_argument("--purge", action="store_true", help="also delete DIR and all data")
    with_dir("env", "print the shell-sourceable environment file")
    with_dir("status", "print each server's pid, or '-' when it is not running")
    return parser


def sandbox_main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "up":
            sandbox = Sandbox(
                args.dir,
                components=args.only or COMPONENTS,
                crd=args.crd,
                secret_policy=None if args.no_secret_policy else DEFAULT_SECRET_POLICY,
                helm=not args.no_helm,
            )
            sandbox.up()
            print(f"source {sandbox.env_file}")
        elif args.command == "down":
            Sandbox(args.dir).down(purge=args.purge)
        elif args.command == "env":
            sys.stdout.write(Sandbox(args.dir).env_file_text())
        elif args.command == "status":
            pids = Sandbox(args.dir).pids()
            for name, pid in pids.items():
                print(f"{name}\t{pid if pid is not None else '-'}")
            return 0 if pids and all(pids.values()) else 1
    except (BinaryError, PKIError, ServerError, SandboxError, CommandError) as error:
        print(f"sandbox: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("sandbox: interrupted; run `sandbox down` to stop what started", file=sys.stderr)
        return 130
    return 0


def main() -> None:
    sys.exit(sandbox_main(sys.argv[1:]))


if __name__ == "__main__":
    main()
