"""``edgelink hash-password``: the command line process, its hash checked by the UI's verifier."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from edgelink.service.config import load_service_settings
from edgelink.ui.auth import verify_login


def hash_password(stdin: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -m edgelink.cli hash-password`` with ``stdin`` piped in (not a terminal)."""
    return subprocess.run(
        [sys.executable, "-m", "edgelink.cli", "hash-password"],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_printed_hash_logs_the_user_in_from_edgelink_json(tmp_path: Path) -> None:
    """Test stdin -> an argon2id hash that edgelink.json accepts and the login verifies."""
    done = hash_password("correct horse battery\n")
    assert done.returncode == 0, done.stderr
    printed = done.stdout.strip()
    assert printed.startswith("$argon2id$") and "\n" not in printed
    (tmp_path / "edgelink.json").write_text(
        json.dumps({"ui": {"users": {"alice": {"password_hash": printed}}}})
    )
    settings = load_service_settings(tmp_path / "edgelink.json").ui
    identity = verify_login(settings, "the-token-0123456789", "alice", "correct horse battery")
    assert identity is not None and identity.who == "user:alice"
    assert verify_login(settings, "the-token-0123456789", "alice", "correct horse") is None
    # A salt per hash: the same password twice gives two hashes.
    assert hash_password("correct horse battery\n").stdout.strip() != printed


def test_spaces_are_kept_and_an_empty_password_is_refused() -> None:
    """Test that only the line end is cut, and that an empty line prints no hash (exit 1)."""
    done = hash_password(" pw with spaces \r\n")
    assert done.returncode == 0, done.stderr
    from argon2 import PasswordHasher

    assert PasswordHasher().verify(done.stdout.strip(), " pw with spaces ")
    empty = hash_password("\n")
    assert empty.returncode == 1
    assert empty.stdout == ""
    assert "the password is empty; nothing printed" in empty.stderr
    assert "Traceback" not in empty.stderr
