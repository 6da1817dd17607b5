"""What has been downloaded and verified: `download_manifest.json`, and the files it describes.

A file of a hub repo (`RemoteFile`) is trusted once its bytes hash to what the hub published
(`file_checksum`); the manifest remembers that, so a re-run trusts it from size + mtime without
re-hashing, and never fetches it again. No hub code here: the offline prepare_subset.py reads the
manifest too.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from owt.atomic_files import write_json_atomically

if TYPE_CHECKING:  # only its fields are read: importing it would pull in huggingface_hub
    from owt.hub_listing import RepoSnapshot

MANIFEST_FILE = "download_manifest.json"
CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class RemoteFile:
    """One file of the repo as the tree API describes it."""

    path: str
    size: int
    sha256: str | None  # LFS files only; others are checked against their git blob id
    git_oid: str

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    @property
    def checksum(self) -> str:
        """What the downloaded bytes must hash to (see `file_checksum`)."""
        return self.sha256 or self.git_oid


def file_checksum(path: Path, remote: RemoteFile) -> str:
    """sha256 of the file if the hub published one for `remote`, else its git blob id."""
    if remote.sha256 is not None:
        digest = hashlib.sha256()
    else:
        digest = hashlib.sha1(b"blob %d\0" % path.stat().st_size)
    with path.open("rb") as f:
        while block := f.read(CHUNK_BYTES):
            digest.update(block)
    return digest.hexdigest()


class DownloadManifest:
    """`download_manifest.json`: the source (repo, revision, resolved commit) and, per file, where
    it was saved, its size, its checksum and the mtime it had when verified.

    A file whose size and mtime still match its record is trusted without re-hashing; a file with
    no (or a stale) record is hashed once and recorded if it matches.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self.data: dict = {"files": {}}
        if self.path.is_file():
            try:
                self.data = json.loads(self.path.read_text())
                self.data.setdefault("files", {})
            except (OSError, ValueError):
                self.data = {"files": {}}  # unreadable: re-verify everything by hashing

    def save(self) -> None:
        with self._lock:
            write_json_atomically(self.path, self.data, sort_keys=True)

    def set_source(self, snapshot: RepoSnapshot) -> None:
        with self._lock:
            self.data.update(
                repo_id=snapshot.repo_id,
                repo_type=snapshot.repo_type,
                revision=snapshot.revision,
                commit=snapshot.commit,
            )
        self.save()

    def record(self, remote: RemoteFile, local: Path) -> None:
        """Remember that `local` holds `remote`, verified now."""
        stat = local.stat()
        with self._lock:
            self.data["files"][remote.path] = {
                "local": os.path.relpath(local, self.path.parent),
                "size": stat.st_size,
                "sha256" if remote.sha256 else "git_oid": remote.checksum,
                "mtime_ns": stat.st_mtime_ns,
                "verified_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            }
        self.save()

    def relocate(self, remote: RemoteFile, local: Path) -> None:
        """`remote`'s verified file was renamed to `local` (a rename keeps its mtime)."""
        with self._lock:
            entry = self.data["files"].get(remote.path)
            if entry is not None:
                entry["local"] = os.path.relpath(local, self.path.parent)
        self.save()

    def consumed(self, remote: RemoteFile, note: str) -> None:
        """`remote`'s verified file was used up (e.g. split); `note` says into what."""
        with self._lock:
            entry = self.data["files"].get(remote.path)
            if entry is not None:
                entry.update(local=None, note=note)
        self.save()

    def source_of(self, local: Path) -> tuple[str, dict] | None:
        """(repo path, record) of the file recorded as saved at `local`, if any."""
        wanted = os.path.relpath(local, self.path.parent)
        with self._lock:
            for remote_path, entry in self.data["files"].items():
                if entry.get("local") == wanted:
                    return remote_path, dict(entry)
        return None

    def entry(self, remote_path: str) -> dict | None:
        with self._lock:
            return self.data["files"].get(remote_path)

    def verified_files(self) -> list[Path] | None:
        """Without asking the hub: the saved files of every recorded download, sorted, if the
        source commit is recorded and each file still has the size and mtime it was verified
        with; None otherwise (nothing recorded, a file consumed, changed or gone)."""
        with self._lock:
            entries = list(self.data["files"].values())
            commit = self.data.get("commit")
        files = []
        for entry in entries:
            if not entry.get("local"):
                return None
            local = self.path.parent / entry["local"]
            try:
                if not _unchanged(entry, local.stat()):
                    return None
            except OSError:
                return None
            files.append(local)
        return sorted(files) if commit and files else None

    def is_verified(self, remote: RemoteFile, local: Path) -> bool:
        """Whether `local` holds exactly `remote` (hashing it only if the record cannot tell)."""
        if not local.is_file():
            return False
        stat = local.stat()
        if stat.st_size != remote.size:
            return False
        entry = self.entry(remote.path)
        if (
            entry is not None
            and entry.get("sha256", entry.get("git_oid")) == remote.checksum
            and _unchanged(entry, stat)
            and entry.get("local") == os.path.relpath(local, self.path.parent)
        ):
            return True
        if file_checksum(local, remote) != remote.checksum:
            return False
        self.record(remote, local)
        return True


def _unchanged(entry: dict, stat: os.stat_result) -> bool:
    """Whether a file still has the size and mtime its manifest entry recorded at verification."""
    return entry.get("size") == stat.st_size and entry.get("mtime_ns") == stat.st_mtime_ns
