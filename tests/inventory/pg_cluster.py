"""A throwaway PostgreSQL cluster for the tests: initdb + pg_ctl in a temporary directory.

The cluster listens only on a unix socket inside its own directory (no TCP port, so it cannot
clash with another cluster on the machine) and trusts local connections. It is stopped by its own
``pg_ctl stop`` and its directory removed; nothing else on the machine is touched. As root,
PostgreSQL's programs run as the ``postgres`` user (initdb refuses root) through ``runuser``.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PgCluster", "find_pg_bindir"]


def find_pg_bindir() -> Path | None:
    """The newest installed PostgreSQL's ``bin`` directory (Debian layout), or PATH's."""
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda path: (
            int(Path(path).parent.parent.name) if Path(path).parent.parent.name.isdigit() else 0
        ),
    )
    if candidates:
        return Path(candidates[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


@dataclass
class PgCluster:
    bindir: Path
    root: Path
    user: str

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://{self.user}@/{database}?host={self.socket_dir}"

    @classmethod
    def start(cls, bindir: Path) -> PgCluster:
        root = Path(tempfile.mkdtemp(prefix="diskless-pg-"))
        as_root = os.geteuid() == 0
        user = "postgres" if as_root else pwd.getpwuid(os.geteuid()).pw_name
        if as_root:
            entry = pwd.getpwnam(user)
            os.chown(root, entry.pw_uid, entry.pw_gid)
        cluster = cls(bindir=bindir, root=root, user=user)
        try:
            cluster._run(
                "initdb",
                "--pgdata",
                str(cluster.data),
                "--auth",
                "trust",
                "--username",
                user,
                "--encoding",
                "UTF8",
                "--no-sync",
            )
            options = " ".join(
                (
                    "-c listen_addresses=''",
                    f"-c unix_socket_directories={cluster.socket_dir}",
                    "-c fsync=off",
                    "-c synchronous_commit=off",
                    "-c full_page_writes=off",
                    "-c max_connections=50",
                )
            )
            cluster._run(
                "pg_ctl",
                "--pgdata",
                str(cluster.data),
                "--log",
                str(cluster.root / "server.log"),
                "--options",
                options,
                "--wait",
                "--timeout",
                "60",
                "start",
            )
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._run(
                "pg_ctl",
                "--pgdata",
                str(self.data),
                "--mode",
                "fast",
                "--wait",
                "stop",
                check=False,
            )
        shutil.rmtree(self.root, ignore_errors=True)

    def log(self) -> str:
        try:
            return (self.root / "server.log").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def _run(self, program: str, *args: str, check: bool = True) -> None:
        command = [str(self.bindir / program), *args]
        if os.geteuid() == 0:
            command = ["runuser", "-u", self.user, "--", *command]
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=120, check=False, cwd=self.root
        )
        if check and result.returncode != 0:
            raise RuntimeError(
                f"{program} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}\n"
                f"{self.log()}"
            )
