"""The hub stand-in's repo model: files, revisions (main and other refs) and the ids the hub
reports for them (git blob, tree and commit ids, LFS sha256 and pointer sizes, Xet hashes), so
that tests/hub_handler.py can answer as huggingface.co does. No HTTP here.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from typing import Literal

import yaml
from huggingface_hub.repocard import REGEX_YAML_BLOCK

LFS_MIN_SIZE = 10 * 1024 * 1024  # the hub refuses larger files outside LFS (Xet)
CREATED_AT = "2022-03-02T23:29:22.000Z"  # the hub's earliest stored creation date

# The .gitattributes the hub commits into every new repo (its LFS patterns decide which files
# are LFS, together with size and binary content).
HUB_GITATTRIBUTES = "".join(
    f"{pattern} filter=lfs diff=lfs merge=lfs -text\n"
    for pattern in (
        "*.7z", "*.arrow", "*.bin", "*.bz2", "*.ckpt", "*.ftz", "*.gz", "*.h5", "*.joblib",
        "*.lfs.*", "*.lz4", "*.mds", "*.mlmodel", "*.model", "*.msgpack", "*.npy", "*.npz",
        "*.onnx", "*.ot", "*.parquet", "*.pb", "*.pickle", "*.pkl", "*.pt", "*.pth", "*.rar",
        "*.safetensors", "saved_model/**/*", "*.tar.*", "*.tar", "*.tflite", "*.tgz", "*.wasm",
        "*.xz", "*.zip", "*.zst", "*tfevents*",
    )
).encode()  # fmt: skip


def git_blob_oid(data: bytes) -> str:
    """The git object id of a blob: what the hub reports as `oid` for a file stored in git."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(data: bytes) -> bytes:
    """The Git LFS pointer git stores for an LFS file (its size is the hub's `pointerSize`)."""
    sha256 = hashlib.sha256(data).hexdigest()
    return (
        f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {len(data)}\n"
    ).encode()


def lfs_patterns(gitattributes: bytes) -> list[str]:
    """The patterns a .gitattributes file marks `filter=lfs`."""
    patterns = []
    for line in gitattributes.decode(errors="replace").splitlines():
        words = line.split()
        if len(words) > 1 and not words[0].startswith("#") and "filter=lfs" in words[1:]:
            patterns.append(words[0])
    return patterns


def _matches_gitattributes(path: str, pattern: str) -> bool:
    # A pattern without "/" matches the file name at any depth; one with "/" the whole path.
    if "/" not in pattern:
        return fnmatch.fnmatchcase(path.rsplit("/", 1)[-1], pattern)
    return fnmatch.fnmatchcase(path, pattern.lstrip("/").replace("**/", "*"))


def _iso(timestamp: int) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def cloudfront_b64(data: bytes) -> str:
    """CloudFront's URL-safe base64 (+ = / become - _ ~)."""
    return base64.b64encode(data).decode().translate(str.maketrans("+=/", "-_~"))


@dataclass
class StubFile:
    data: bytes
    lfs: bool

    @cached_property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def etag(self) -> str:
        """What huggingface_hub takes as the file's etag: sha256 for LFS, else the blob id."""
        return self.sha256 if self.lfs else git_blob_oid(self.data)

    @cached_property
    def oid(self) -> str:
        """The git object id the hub lists: of the LFS pointer for an LFS file."""
        return git_blob_oid(lfs_pointer(self.data) if self.lfs else self.data)

    @property
    def pointer_size(self) -> int:
        return len(lfs_pointer(self.data))

    @cached_property
    def xet_hash(self) -> str:
        """A stand-in for the file's Xet hash: 64 hex digits, as the hub lists (not the real
        Xet merkle hash, which nothing here checks)."""
        return hashlib.sha256(b"xet\0" + bytes.fromhex(self.sha256)).hexdigest()


RefKind = Literal["branch", "tag", "convert", "pr"]
_REF_KINDS: dict[str, RefKind] = {
    "refs/heads/": "branch",
    "refs/tags/": "tag",
    "refs/convert/": "convert",
    "refs/pr/": "pr",
}


@dataclass
class StubRevision:
    """One ref of a repo and the commit it points to: its files, git tree and commit ids."""

    ref: str  # full ref name: "refs/heads/main", "refs/pr/1", "refs/convert/parquet"
    entries: dict[str, StubFile]
    commit: str
    timestamp: int
    title: str
    folder_oids: dict[str, str]  # folder path -> git tree id ("" = the root)

    @property
    def kind(self) -> RefKind:
        return next(kind for prefix, kind in _REF_KINDS.items() if self.ref.startswith(prefix))

    @property
    def name(self) -> str:
        """The name the refs API shows: "main", "parquet", "1"."""
        return self.ref.split("/", 2)[2]

    @property
    def last_modified(self) -> str:
        return _iso(self.timestamp)

    def folders(self) -> set[str]:
        return set(self.folder_oids) - {""}

    def paths(self) -> list[str]:
        """Every file and folder, sorted: the order of the tree listing."""
        return sorted([*self.folders(), *self.entries])

    def tree_entry(self, path: str, expand: bool = False) -> dict:
        if path in self.entries:
            entry = self.entries[path]
            info: dict = {"type": "file", "oid": entry.oid, "size": len(entry.data), "path": path}
            if entry.lfs:
                info["lfs"] = {
                    "oid": entry.sha256,
                    "size": len(entry.data),
                    "pointerSize": entry.pointer_size,
                }
                info["xetHash"] = entry.xet_hash
        else:
            info = {"type": "directory", "oid": self.folder_oids[path], "size": 0, "path": path}
        if expand:
            info["lastCommit"] = {
                "id": self.commit,
                "title": self.title,
                "date": self.last_modified,
            }
            if info["type"] == "file":
                info["securityFileStatus"] = {
                    "status": "safe",
                    "filename": path,
                    "avScan": {"virusFound": False, "virusNames": None},
                    "pickleImportScan": None,
                }
        return info

    def card_data(self) -> dict | None:
        """The YAML front matter of README.md, as the hub serves it in `cardData`."""
        readme = self.entries.get("README.md")
        if readme is None:
            return None
        match = REGEX_YAML_BLOCK.search(readme.data.decode("utf-8-sig", errors="replace"))
        if match is None:
            return None
        try:
            data = yaml.safe_load(match.group(2))
        except yaml.YAMLError:
            return None
        return data if isinstance(data, dict) else None

    def card_text(self) -> str:
        readme = self.entries.get("README.md")
        if readme is None:
            return ""
        text = readme.data.decode("utf-8-sig", errors="replace")
        match = REGEX_YAML_BLOCK.search(text)
        return text[match.end() :] if match else text


def _entries(files: dict[str, bytes]) -> dict[str, StubFile]:
    patterns = lfs_patterns(files.get(".gitattributes", HUB_GITATTRIBUTES))

    def is_lfs(path: str, data: bytes) -> bool:
        return (
            len(data) >= LFS_MIN_SIZE
            or b"\0" in data[:8000]  # binary content goes to LFS, as the hub's pre-upload says
            or any(_matches_gitattributes(path, p) for p in patterns)
        )

    return {path: StubFile(data, is_lfs(path, data)) for path, data in sorted(files.items())}


def _tree_oids(entries: dict[str, StubFile]) -> dict[str, str]:
    """The git tree id of every folder (and of the root, ""), computed as git does."""
    children: dict[str, dict[str, tuple[str, str]]] = {"": {}}  # folder -> name -> (mode, oid)
    for path, entry in entries.items():
        parts = path.split("/")
        for depth in range(len(parts)):
            children.setdefault("/".join(parts[:depth]), {})
        children["/".join(parts[:-1])][parts[-1]] = ("100644", entry.oid)
    oids: dict[str, str] = {}
    for folder in sorted(children, key=lambda f: f.count("/") + (f != ""), reverse=True):
        # git sorts a tree's entries by name, a folder's name taken as "name/"
        items = sorted(
            children[folder].items(), key=lambda kv: kv[0] + ("/" if kv[1][0] == "40000" else "")
        )
        body = b"".join(
            f"{mode} {name}\0".encode() + bytes.fromhex(oid) for name, (mode, oid) in items
        )
        oids[folder] = hashlib.sha1(b"tree %d\0" % len(body) + body).hexdigest()
        if folder:  # deepest first: the parent is written after all its sub-folders
            parent, _, name = folder.rpartition("/")
            children[parent][name] = ("40000", oids[folder])
    return oids


def _commit_oid(tree: str, parent: str | None, author: str, timestamp: int, title: str) -> str:
    parent_line = f"parent {parent}\n" if parent else ""
    who = f"{author} <{author}@users.noreply.huggingface.co> {timestamp} +0000"
    body = f"tree {tree}\n{parent_line}author {who}\ncommitter {who}\n\n{title}\n".encode()
    return hashlib.sha1(b"commit %d\0" % len(body) + body).hexdigest()


MAIN_TIME = 1704067200  # 2024-01-01: commits are dated, so their ids are stable
_COMMIT_TITLES: dict[RefKind, str] = {
    "branch": "Upload folder using huggingface_hub",
    "tag": "Upload folder using huggingface_hub",
    "convert": "Update parquet files",
    "pr": "Convert dataset to Parquet",
}


@dataclass
class StubRepo:
    """A repo: `files` on main plus the files of other refs.

    token: if set, the repo is private and needs `Bearer <token>`.
    refs: full ref name ("refs/pr/1", "refs/convert/parquet", "refs/heads/dev", "refs/tags/v1")
        -> the files at that ref. Every revision gets a git commit id derived from its files.
    """

    repo_id: str
    files: dict[str, bytes]
    repo_type: Literal["model", "dataset"] = "dataset"
    token: str | None = None
    refs: dict[str, dict[str, bytes]] = field(default_factory=dict)
    entries: dict[str, StubFile] = field(init=False)  # main's
    commit: str = field(init=False)  # main's
    revisions: dict[str, StubRevision] = field(init=False)  # full ref name -> revision

    def __post_init__(self) -> None:
        main = self._revision("refs/heads/main", self.files, None, 0)
        self.revisions = {main.ref: main}
        for n, (ref, files) in enumerate(sorted(self.refs.items()), start=1):
            pr_number = ref.removeprefix("refs/pr/")
            if (
                ref == "refs/heads/main"
                or not ref.startswith(tuple(_REF_KINDS))
                or (ref.startswith("refs/pr/") and not pr_number.isdigit())
            ):
                wanted = "refs/heads/X (not main), refs/tags/X, refs/convert/X or refs/pr/N"
                raise ValueError(f"{ref!r}: want {wanted}")
            parent = None if ref.startswith("refs/convert/") else main.commit  # an orphan branch
            self.revisions[ref] = self._revision(ref, files, parent, n)
        self.entries = main.entries
        self.commit = main.commit

    def _revision(
        self, ref: str, files: dict[str, bytes], parent: str | None, n: int
    ) -> StubRevision:
        entries = _entries(files)
        folder_oids = _tree_oids(entries)
        kind = next(k for prefix, k in _REF_KINDS.items() if ref.startswith(prefix))
        author = "parquet-converter" if kind == "convert" else self.repo_id.partition("/")[0]
        timestamp = MAIN_TIME + 86400 * n
        title = _COMMIT_TITLES[kind]
        commit = _commit_oid(folder_oids[""], parent, author, timestamp, title)
        return StubRevision(ref, entries, commit, timestamp, title, folder_oids)

    def revision(self, revision: str) -> StubRevision | None:
        """The revision a name resolves to, as git does: a full ref, a commit id, or the short
        name of a branch or tag (tags first); None if unknown."""
        if revision in self.revisions:
            return self.revisions[revision]
        for candidate in self.revisions.values():
            if candidate.commit == revision:
                return candidate
        for prefix in ("refs/tags/", "refs/heads/"):
            if prefix + revision in self.revisions:
                return self.revisions[prefix + revision]
        return None

    def knows_revision(self, revision: str) -> bool:
        return self.revision(revision) is not None

    def _at(self, revision: str) -> StubRevision:
        found = self.revision(revision)
        if found is None:
            raise KeyError(f"{self.repo_id} has no revision {revision!r}")
        return found

    def commit_of(self, revision: str) -> str:
        """The commit id of a revision ("main", "refs/pr/1", a branch...)."""
        return self._at(revision).commit

    def entries_at(self, revision: str) -> dict[str, StubFile]:
        """The files of a revision, by path."""
        return self._at(revision).entries

    def folders(self, revision: str = "main") -> set[str]:
        return self._at(revision).folders()

    def tree_entry(self, path: str, revision: str = "main") -> dict:
        return self._at(revision).tree_entry(path)

    @property
    def mongo_id(self) -> str:
        """The hub's `_id`: a 24-hex object id."""
        return hashlib.sha1(f"{self.repo_type}/{self.repo_id}".encode()).hexdigest()[:24]

    def used_storage(self) -> int:
        """Bytes stored for the repo: every distinct file of every revision."""
        blobs = {e.oid: len(e.data) for r in self.revisions.values() for e in r.entries.values()}
        return sum(blobs.values())

    def find_lfs(self, xet_hash: str) -> StubFile | None:
        for revision in self.revisions.values():
            for entry in revision.entries.values():
                if entry.lfs and entry.xet_hash == xet_hash:
                    return entry
        return None
