"""The per-install control secret: where it lives, its format, creation, rotation and comparison.

Every local control surface that is not the app itself (the control port's JSON lines, `dreamcam
set`, Stream Deck plugins and scripts, the browser control page) proves it may drive the camera
with this secret. It is one line of URL-safe base64 (32 random bytes, 43 characters) in the file
`control-token` of the user's config folder (`$DREAMCAM_CONFIG_DIR` overrides it), created on first
use with owner-only permissions (0600) and never logged. On Windows the config folder lies in the
user's own profile, which other users cannot read; the POSIX mode bits are not used there.
"""

from __future__ import annotations

import hmac
import logging
import os
import re
import secrets
import stat
import sys
import tempfile
from pathlib import Path
from typing import Any

FILE_NAME = "control-token"
TOKEN_BYTES = 32
TOKEN_FORMAT = re.compile(r"^[A-Za-z0-9_-]{32,128}$")
MAX_FILE_BYTES = 1024
POSIX = sys.platform != "win32"

log = logging.getLogger(__name__)


class SecretError(OSError):
    """The secret file cannot be used (unreadable, malformed, not ours); the text says the fix."""


def secret_path() -> Path:
    from .config import config_dir

    return config_dir() / FILE_NAME


def where() -> str:
    """One phrase for error messages: where the secret is and how to print it."""
    return f"the control token is in {secret_path()} (print it with `dreamcam token`)"


def new_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


def load_or_create() -> str:
    """The secret, created now (0600) when there is none yet. Two processes creating it at the same
    moment end with the same secret: the file appears complete or not at all (a hard link of a
    finished temporary file), and the loser reads the winner's."""
    path = secret_path()
    try:
        return read(path)
    except FileNotFoundError:
        pass
    try:
        _publish(path, new_token(), replace=False)
    except FileExistsError:
        pass
    return read(path)


def rotate() -> str:
    """A new secret replaces the old one atomically; a running app uses it from its next message."""
    token = new_token()
    _publish(secret_path(), token, replace=True)
    return token


def read(path: Path | None = None) -> str:
    """The secret in `path` (default: `secret_path()`). FileNotFoundError when there is none;
    SecretError when it is malformed or may have been planted by another user."""
    path = path or secret_path()
    try:
        with open(path, "rb") as handle:
            info = os.fstat(handle.fileno())
            _check_owner(path, info)
            data = handle.read(MAX_FILE_BYTES + 1)
    except (FileNotFoundError, SecretError):
        raise
    except OSError as exc:
        raise SecretError(f"cannot read the control token {path} ({exc.strerror or exc})") from None
    _tighten(path, info)
    try:
        token = data.decode("ascii").strip()
    except UnicodeDecodeError:
        token = ""
    if len(data) > MAX_FILE_BYTES or not TOKEN_FORMAT.match(token):
        raise SecretError(f"the control token file {path} is malformed (expected one line of 32 to 128 "
                          "letters, digits, '-' or '_'); make a new one with `dreamcam token --rotate`")
    return token


def matches(candidate: Any, token: str) -> bool:
    """Constant-time comparison of what a client sent with the secret (any type is refused
    except a string)."""
    if not isinstance(candidate, str):
        return False
    return hmac.compare_digest(candidate.encode("utf-8", "replace"), token.encode("ascii"))


def _publish(path: Path, token: str, *, replace: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=".control-token-", dir=path.parent)  # 0600 from the start
    try:
        with os.fdopen(handle, "w", encoding="ascii") as out:
            out.write(token + "\n")
            out.flush()
            os.fsync(out.fileno())
        if POSIX:
            os.chmod(tmp, 0o600)
        if replace:
            os.replace(tmp, path)
        else:
            _link_new(tmp, path)
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass


def _link_new(tmp: str, path: Path) -> None:
    """Make `path` the finished `tmp`, failing with FileExistsError when `path` already exists."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise
    except OSError:  # a file system without hard links: exclusive create, then fill
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as out, open(tmp, encoding="ascii") as source:
            out.write(source.read())


def _check_owner(path: Path, info: os.stat_result) -> None:
    if POSIX and hasattr(os, "getuid") and info.st_uid != os.getuid():
        raise SecretError(f"the control token {path} belongs to another user (uid {info.st_uid}); "
                          "delete it and run `dreamcam token --rotate`, or point DREAMCAM_CONFIG_DIR at "
                          "a folder of your own")


def _tighten(path: Path, info: os.stat_result) -> None:
    """A secret others can read is no secret: make it owner-only again (e.g. after a copy)."""
    if POSIX and stat.S_IMODE(info.st_mode) & 0o077:
        log.warning("the control token %s was readable by other users: made it owner-only; "
                    "consider `dreamcam token --rotate`", path)
        try:
            os.chmod(path, 0o600)
        except OSError:
            raise SecretError(f"the control token {path} is readable by other users and cannot be made "
                              "private; fix its permissions (chmod 600) or rotate it") from None


class SecretFile:
    """The secret as a server sees it: read once, read again when the file changes (so `dreamcam
    token --rotate` takes effect at the next message without a restart), created when missing."""

    def __init__(self) -> None:
        self._token = ""
        self._signature: tuple[int, int, int] | None = None

    def current(self) -> str:
        signature = _signature(secret_path())
        if signature is None or signature != self._signature or not self._token:
            self._token = load_or_create()
            self._signature = _signature(secret_path())
        return self._token


def _signature(path: Path) -> tuple[int, int, int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_ino, info.st_mtime_ns, info.st_size
