"""Downloading pretrained models: resume, verification, safe extraction, offline errors."""

from __future__ import annotations

import hashlib
import http.server
import io
import os
import socket
import threading
import zipfile

import pytest

from sat.resources import DownloadError, auto_create, sat_home
from sat.resources.download import extract_archive


def _zip_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buffer.getvalue()


class _Server:
    """A local HTTP server with Range support; ``routes`` maps paths to (bytes, content type)."""

    def __init__(self):
        self.routes: dict[str, tuple[bytes, str]] = {}
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests.append((self.path, self.headers.get("Range")))
                if self.path not in server.routes:
                    self.send_response(404)
                    self.end_headers()
                    return
                body, kind = server.routes[self.path]
                start = 0
                if self.headers.get("Range"):
                    start = int(self.headers["Range"].split("=")[1].rstrip("-"))
                    if start >= len(body):
                        self.send_response(416)
                        self.end_headers()
                        return
                    self.send_response(206)
                else:
                    self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                self.wfile.write(body[start:])

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture
def server():
    s = _Server()
    yield s
    s.httpd.shutdown()


ARCHIVE = _zip_bytes({"tiny/model_config.json": b'{"model_class": "BaseModel"}', "tiny/latest": b"1"})


def test_download_and_extract(tmp_path, server):
    server.routes["/tiny.zip"] = (ARCHIVE, "application/zip")
    path = auto_create("tiny", path=str(tmp_path), url=server.url + "/tiny.zip")
    assert path == str(tmp_path / "tiny")
    assert (tmp_path / "tiny" / "latest").read_text() == "1"
    assert sorted(os.listdir(tmp_path)) == ["tiny", "tiny.lock"]  # archive removed, no staging left
    assert auto_create("tiny", path=str(tmp_path), url=server.url + "/tiny.zip") == path
    assert len(server.requests) == 1  # the second call found it installed


def test_download_resumes_partial_file(tmp_path, server):
    server.routes["/tiny.zip"] = (ARCHIVE, "application/zip")
    (tmp_path / "tiny.zip.part").write_bytes(ARCHIVE[:100])
    auto_create("tiny", path=str(tmp_path), url=server.url + "/tiny.zip")
    assert server.requests == [("/tiny.zip", "bytes=100-")]
    assert (tmp_path / "tiny" / "model_config.json").exists()


def test_checksum_is_verified(tmp_path, server):
    server.routes["/tiny.zip"] = (ARCHIVE, "application/zip")
    good = hashlib.sha256(ARCHIVE).hexdigest()
    auto_create("tiny", path=str(tmp_path / "a"), url=f"{server.url}/tiny.zip#sha256={good}")
    with pytest.raises(DownloadError, match="does not match the expected 00"):
        auto_create("tiny", path=str(tmp_path / "b"), url=f"{server.url}/tiny.zip#sha256={'0' * 64}")
    assert not (tmp_path / "b" / "tiny").exists() and not (tmp_path / "b" / "tiny.zip.part").exists()


def test_html_error_page_is_not_an_archive(tmp_path, server):
    server.routes["/expired.zip"] = (b"<html>link expired</html>", "text/html; charset=utf-8")
    with pytest.raises(DownloadError, match="returned a web page, not an archive"):
        auto_create("tiny", path=str(tmp_path), url=server.url + "/expired.zip")
    assert not (tmp_path / "tiny").exists()


def test_http_error_names_url_and_manual_steps(tmp_path, server):
    with pytest.raises(DownloadError, match=r"HTTP 404 from .*/gone.zip.*place the archive at .*tiny.zip"):
        auto_create("tiny", path=str(tmp_path), url=server.url + "/gone.zip")


def test_offline_error_names_url_and_where_to_put_files(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/model.zip"
    with pytest.raises(DownloadError) as error:
        auto_create("tiny", path=str(tmp_path), url=url)
    message = str(error.value)
    assert url in message and str(tmp_path / "tiny" / "model_config.json") in message


def test_private_store_and_unknown_names(tmp_path):
    with pytest.raises(DownloadError, match="private object store .*chatglm2-6b.zip.*unpack it so that"):
        auto_create("chatglm2-6b", path=str(tmp_path))
    with pytest.raises(ValueError, match="unknown model name 'gpt7'"):
        auto_create("gpt7", path=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="url='local' disables downloading"):
        auto_create("gpt2", path=str(tmp_path), url="local")
    (tmp_path / "gpt2").mkdir()
    assert auto_create("gpt2", path=str(tmp_path), url="local") == str(tmp_path / "gpt2")


@pytest.mark.parametrize(
    "member",
    ["../evil.txt", "/etc/evil.txt", "tiny/../../evil.txt"],
)
def test_unsafe_archive_members_are_refused(tmp_path, member):
    archive = tmp_path / "tiny.zip"
    archive.write_bytes(_zip_bytes({"tiny/latest": b"1", member: b"x"}))
    home = tmp_path / "home"
    home.mkdir()
    with pytest.raises(DownloadError, match="unsafe member"):
        extract_archive(str(archive), str(home), "tiny")
    assert os.listdir(home) == [] and not (tmp_path / "evil.txt").exists()


def test_archive_without_expected_folder(tmp_path):
    archive = tmp_path / "x.zip"
    archive.write_bytes(_zip_bytes({"other/latest": b"1"}))
    with pytest.raises(DownloadError, match="does not contain a top-level folder tiny/"):
        extract_archive(str(archive), str(tmp_path), "tiny")


def test_sat_home_is_absolute(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SAT_HOME", "relative/models")
    assert sat_home() == str(tmp_path / "relative" / "models")
    monkeypatch.delenv("SAT_HOME")
    assert sat_home() == os.path.expanduser("~/.sat_models")
