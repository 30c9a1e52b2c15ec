"""Downloading pretrained checkpoints into ``SAT_HOME``.

A download resumes where an interrupted one stopped (``<name>.zip.part``), is checked (size,
archive integrity, an optional ``#sha256=<hex>`` suffix on the URL, and no HTML error page
passed off as an archive) and extracted into a temporary folder that is renamed into place, so
``$SAT_HOME/<name>`` exists only when complete. Archive members that would land outside that
folder, and links, are refused. Without network access the error says where to put the files
by hand.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import zipfile

from filelock import FileLock

from sat.resources.urls import MODEL_URLS

_CHUNK = 1 << 20


class DownloadError(RuntimeError):
    """A pretrained model could not be downloaded or unpacked."""


def sat_home(path: str | None = None) -> str:
    """The folder downloads go to: ``path``, else ``$SAT_HOME``, else ``~/.sat_models``
    (always made absolute, so a relative ``SAT_HOME`` does not depend on the current folder)."""
    return os.path.abspath(os.path.expanduser(path or os.environ.get("SAT_HOME") or "~/.sat_models"))


def _manual_instructions(name: str, url: str, archive: str, model_path: str) -> str:
    return (
        f"To install it by hand, download {url} on a machine with network access and either place the "
        f"archive at {archive} or unpack it so that {model_path}/model_config.json exists."
    )


def auto_create(name: str, *, path: str | None = None, url: str | None = None) -> str:
    """Return ``<home>/<name>``, downloading and unpacking it first if needed.

    Args:
        name: a key of ``MODEL_URLS``, or any name when ``url`` is given.
        path: the home folder (default: see ``sat_home``).
        url: where to download from; ``"local"`` never downloads.
    """
    home = sat_home(path)
    model_path = os.path.join(home, name)
    if url == "local":
        if not os.path.isdir(model_path):
            raise FileNotFoundError(f"{model_path} does not exist (url='local' disables downloading)")
        return model_path
    if url is None and name not in MODEL_URLS:
        raise ValueError(
            f"unknown model name {name!r}: it is not a directory and not a pretrained name "
            "(see sat.helpers.list_avail_pretrained()). Pass a checkpoint directory, or url=... to download."
        )
    url = url or MODEL_URLS[name]
    os.makedirs(home, exist_ok=True)
    with FileLock(model_path + ".lock"):
        if os.path.isdir(model_path):
            return model_path
        archive = os.path.join(home, name + ".zip")
        if url.startswith("r2://"):
            raise DownloadError(
                f"{name!r} is hosted in a private object store ({url}) that needs credentials sat does not "
                "ship. " + _manual_instructions(name, url, archive, model_path)
            )
        if not os.path.isfile(archive):
            download(url, archive, instructions=_manual_instructions(name, url, archive, model_path))
        extract_archive(archive, home, name)
        os.remove(archive)
    return model_path


def download(url: str, destination: str, instructions: str = "") -> None:
    """Download ``url`` to ``destination``, resuming ``destination + '.part'`` if present."""
    import requests
    from tqdm import tqdm

    url, _, fragment = url.partition("#")
    expected_sha256 = fragment.removeprefix("sha256=") if fragment.startswith("sha256=") else None
    part = destination + ".part"
    offset = os.path.getsize(part) if os.path.exists(part) else 0
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    try:
        response = requests.get(url, stream=True, headers=headers, timeout=(10, 60))
    except requests.RequestException as e:
        raise DownloadError(f"could not download {url}: {e}. {instructions}") from e
    with response:
        if response.status_code == 416 and offset:  # the part file is already complete
            total = offset
        elif response.status_code in (200, 206):
            if response.status_code == 200:
                offset = 0  # the server ignored the range: start over
            if "text/html" in response.headers.get("Content-Type", ""):
                raise DownloadError(f"{url} returned a web page, not an archive (expired link?). {instructions}")
            length = response.headers.get("Content-Length")
            total = offset + int(length) if length is not None else None
            with (
                open(part, "ab" if offset else "wb") as f,
                tqdm(total=total, initial=offset, unit="B", unit_scale=True, desc=os.path.basename(destination)) as bar,
            ):
                try:
                    for chunk in response.iter_content(_CHUNK):
                        f.write(chunk)
                        bar.update(len(chunk))
                except requests.RequestException as e:
                    raise DownloadError(f"download of {url} broke off ({e}); run again to resume") from e
        else:
            raise DownloadError(f"HTTP {response.status_code} from {url}. {instructions}")
    size = os.path.getsize(part)
    if total is not None and size != total:
        raise DownloadError(f"download of {url} is incomplete ({size} of {total} bytes); run again to resume")
    if expected_sha256 is not None:
        digest = _sha256(part)
        if digest != expected_sha256:
            os.remove(part)
            raise DownloadError(f"{url}: sha256 {digest} does not match the expected {expected_sha256}")
    os.replace(part, destination)


def _sha256(path: str) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            sha.update(block)
    return sha.hexdigest()


def _check_member(name: str, root: str, is_link: bool, archive: str) -> None:
    target = os.path.realpath(os.path.join(root, name))
    if os.path.isabs(name) or not target.startswith(os.path.realpath(root) + os.sep) or is_link:
        raise DownloadError(f"{archive} contains an unsafe member {name!r} (absolute, outside the folder, or a link)")


def extract_archive(archive: str, home: str, name: str) -> str:
    """Unpack ``archive`` (zip or tar) whose top-level folder is ``name`` into ``home/name``."""
    staging = tempfile.mkdtemp(prefix=f".{name}-", dir=home)
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                for info in zf.infolist():
                    is_link = (info.external_attr >> 16) & 0o170000 == 0o120000
                    _check_member(info.filename, staging, is_link, archive)
                bad = zf.testzip()
                if bad is not None:
                    raise DownloadError(f"{archive} is corrupt (bad CRC in {bad}); delete it and download again")
                zf.extractall(staging)
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as tf:
                for member in tf.getmembers():
                    _check_member(member.name, staging, member.issym() or member.islnk(), archive)
                tf.extractall(staging, filter="data")
        else:
            raise DownloadError(f"{archive} is neither a zip nor a tar archive; delete it and download again")
        unpacked = os.path.join(staging, name)
        if not os.path.isdir(unpacked):
            raise DownloadError(f"{archive} does not contain a top-level folder {name}/")
        target = os.path.join(home, name)
        os.replace(unpacked, target)
        return target
    finally:
        shutil.rmtree(staging, ignore_errors=True)
