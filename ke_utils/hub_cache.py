"""Disk use of hub checkpoints in the Hugging Face hub cache, and deleting a checkpoint's download.

The hub cache is ``cache_dir`` when given, else huggingface_hub's own default (``$HF_HUB_CACHE``,
else ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``), the folder ``from_pretrained`` downloads
to. A checkpoint's revision (a branch such as ``step20000-tokens84B``, a tag or a commit hash) is
resolved through the repo's ``refs/`` to the commit whose snapshot holds its files. Local folders
(``revision=None``) are never looked up nor touched.
"""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import CachedRevisionInfo, HFCacheInfo, constants, scan_cache_dir
from huggingface_hub.errors import CacheNotFound

from .checkpoints import Checkpoint

__all__ = ["hub_cache_dir", "cached_revision", "revision_disk_bytes", "delete_revision", "format_bytes"]


def hub_cache_dir(cache_dir: str | Path | None = None) -> Path:
    """``cache_dir`` if given, else huggingface_hub's hub cache folder (read when called)."""
    return Path(cache_dir if cache_dir is not None else constants.HF_HUB_CACHE)


def cached_revision(ckpt: Checkpoint, cache_dir: str | Path | None = None
                    ) -> tuple[HFCacheInfo, CachedRevisionInfo] | None:
    """The scanned hub cache and the snapshot ``ckpt.revision`` resolves to there (a ref, else a
    commit hash), or None for a local folder, a missing cache, or a revision not in it (a repo folder
    that the scan finds damaged counts as not in it)."""
    if ckpt.revision is None:
        return None
    try:
        info = scan_cache_dir(hub_cache_dir(cache_dir))
    except CacheNotFound:
        return None
    for repo in info.repos:
        if repo.repo_type == "model" and repo.repo_id == ckpt.path:
            by_hash = {revision.commit_hash: revision for revision in repo.revisions}
            found = repo.refs.get(ckpt.revision) or by_hash.get(ckpt.revision)
            return (info, found) if found is not None else None
    return None


def revision_disk_bytes(ckpt: Checkpoint, cache_dir: str | Path | None = None) -> int:
    """Bytes of the blobs ``ckpt``'s snapshot links to in the hub cache (a blob shared with other
    revisions counts in full); 0 for a local folder or a revision not in the cache."""
    found = cached_revision(ckpt, cache_dir)
    return found[1].size_on_disk if found else 0


def delete_revision(ckpt: Checkpoint, cache_dir: str | Path | None = None) -> int:
    """Delete ``ckpt``'s snapshot from the hub cache with huggingface_hub's cache API: its folder,
    the refs naming its commit (all of them: refs of one commit share one snapshot), and the blobs no
    other cached revision links to (the whole repo folder if it was the last revision). Returns the
    bytes freed; a local folder or a revision not in the cache: nothing deleted, 0."""
    found = cached_revision(ckpt, cache_dir)
    if found is None:
        return 0
    info, revision = found
    strategy = info.delete_revisions(revision.commit_hash)
    strategy.execute()
    return strategy.expected_freed_size


def format_bytes(n: float) -> str:
    """``4_700_000_000`` -> ``"4.7 GB"``, ``512`` -> ``"512 B"`` (decimal units, as the hub shows sizes)."""
    units = ("B", "kB", "MB", "GB", "TB")
    power = 0
    while abs(n) >= 1000 and power < len(units) - 1:
        n /= 1000
        power += 1
    return f"{n:.0f} B" if power == 0 else f"{n:.1f} {units[power]}"
