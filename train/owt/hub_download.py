"""Download files of a Hugging Face Hub repo: pinned to one commit, verified, resumable, atomic.

The front door of the download code that download_subset.py and download_openwebtext.py share:
it only re-exports, so the scripts import from one place while each job lives in its own module.

Why not `hf_hub_download`: in huggingface_hub 2.x it does not retry a 5xx answer to the file GET,
does not resume across calls, and does not check content (a same-size corrupt file is accepted and
then cached by its etag). Here every file is

* listed with its sha256 (LFS metadata from the tree API) at a commit resolved once per run
  (hub_listing.py),
* streamed through huggingface_hub's own HTTP session, so HF_ENDPOINT, HF_TOKEN (or a saved
  `hf auth login` token), proxies and HF_HUB_OFFLINE behave as everywhere else in the library,
  written to `DIR/.partial/`, resumed with a Range request after a dropped connection, also by a
  later run (hub_transfer.py),
* retried with exponential backoff on 408/429/5xx answers, connection errors and timeouts
  (hub_retry.py),
* hashed once complete; a mismatch throws the bytes away and downloads the file again,
* fsynced and renamed into place only once verified, then recorded in `download_manifest.json`
  (so a re-run trusts it from size + mtime without re-hashing, and never fetches it again;
  download_manifest.py),
* fetched `max_workers` at a time after checking the disk has room (hub_parallel.py,
  disk_space.py), as the scripts' flags ask (hub_args.py).
"""

from owt.disk_space import check_free_space, format_bytes
from owt.download_manifest import MANIFEST_FILE, DownloadManifest, RemoteFile, file_checksum
from owt.hub_args import DEFAULT_REPO_ID, add_download_arguments, retry_policy, snapshot_from_args
from owt.hub_listing import RepoSnapshot, list_snapshot
from owt.hub_parallel import download_all
from owt.hub_retry import HubDownloadError, RetryPolicy, call_with_retries, explain
from owt.hub_transfer import PARTIAL_DIR, download_file, partial_bytes

__all__ = [
    "DEFAULT_REPO_ID",
    "MANIFEST_FILE",
    "PARTIAL_DIR",
    "DownloadManifest",
    "HubDownloadError",
    "RemoteFile",
    "RepoSnapshot",
    "RetryPolicy",
    "add_download_arguments",
    "call_with_retries",
    "check_free_space",
    "download_all",
    "download_file",
    "explain",
    "file_checksum",
    "format_bytes",
    "list_snapshot",
    "partial_bytes",
    "retry_policy",
    "snapshot_from_args",
]
