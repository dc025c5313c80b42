"""Safe extraction of an uploaded adapter archive (.tar, .tar.gz, .tgz or .zip).

Only regular files and folders are extracted, every member must stay inside the target
folder (no absolute paths, no ``..``, no links, no devices) and the unpacked size is
bounded, so an archive cannot write outside its folder or fill the disk.
"""

from __future__ import annotations

import shutil
import tarfile
import tempfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from service.adapters.checks import ADAPTER_CONFIG
from service.errors import AdapterRejected


def _safe_member(name: str) -> PurePosixPath:
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or (path.parts and ":" in path.parts[0]):
        raise AdapterRejected(f"archive member {name!r} would be written outside the adapter "
                              "folder; archive refused", code="unsafe_archive")
    return path


def extract_archive(archive: Path, dest: Path, max_bytes: int) -> Path:
    """Unpack ``archive`` into the new folder ``dest`` and return it (the adapter files
    may sit at the archive root or in one top-level folder). Raises AdapterRejected."""
    dest = Path(dest)
    if dest.exists():
        raise AdapterRejected(f"{dest.name!r} already exists on the server", code="adapter_exists")
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".upload-", dir=dest.parent))
    try:
        try:
            if zipfile.is_zipfile(archive):
                _extract_zip(archive, staging, max_bytes)
            elif tarfile.is_tarfile(archive):
                _extract_tar(archive, staging, max_bytes)
            else:
                raise AdapterRejected("upload is not a .zip or .tar(.gz) archive",
                                      code="bad_archive")
        except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error,
                NotImplementedError, RuntimeError) as exc:
            # A truncated/corrupt stream, headers that lie about sizes (CRC mismatch), an
            # unsupported compression or an encrypted member: the upload's fault, not ours.
            raise AdapterRejected(f"archive is corrupt or unsupported: {exc}",
                                  code="bad_archive") from None
        root = _adapter_root(staging)
        root.rename(dest)
        return dest
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _extract_zip(archive: Path, staging: Path, max_bytes: int) -> None:
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        total = 0
        for info in infos:
            _safe_member(info.filename)
            # Unix mode bits in external_attr: refuse symlinks.
            if (info.external_attr >> 16) & 0o170000 == 0o120000:
                raise AdapterRejected(f"archive member {info.filename!r} is a link; refused",
                                      code="unsafe_archive")
            total += info.file_size
        if total > max_bytes:
            raise AdapterRejected(f"archive unpacks to more than {max_bytes} bytes",
                                  code="archive_too_large")
        for info in infos:
            target = staging / _safe_member(info.filename)
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out)


def _extract_tar(archive: Path, staging: Path, max_bytes: int) -> None:
    with tarfile.open(archive) as tf:
        members = tf.getmembers()
        total = 0
        for member in members:
            _safe_member(member.name)
            if not (member.isfile() or member.isdir()):
                raise AdapterRejected(f"archive member {member.name!r} is not a regular file or "
                                      "folder; refused", code="unsafe_archive")
            total += member.size
        if total > max_bytes:
            raise AdapterRejected(f"archive unpacks to more than {max_bytes} bytes",
                                  code="archive_too_large")
        # The "data" filter re-checks paths and strips modes/owners (PEP 706).
        tf.extractall(staging, members=members, filter="data")


def _adapter_root(staging: Path) -> Path:
    if (staging / ADAPTER_CONFIG).is_file():
        return staging
    children = [p for p in staging.iterdir() if not p.name.startswith(".")]
    if len(children) == 1 and children[0].is_dir() and (children[0] / ADAPTER_CONFIG).is_file():
        return children[0]
    raise AdapterRejected(f"archive has no {ADAPTER_CONFIG} at its root or in one top-level "
                          "folder", code="bad_archive")
