"""A Hugging Face hub on 127.0.0.1 serving model repos from folders: the part of the hub API
that ``huggingface_hub.snapshot_download`` and ``hf_hub_download`` use (a repo's revision
info, its file tree, each file's HEAD and GET), with the hub's error codes for a missing repo,
revision or file. Tests point HF_ENDPOINT at it to run real downloads without network."""
from __future__ import annotations

import hashlib
import json
import shutil
import threading
import urllib.parse
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

OLD, NEW = "0123456789abcdef0123456789abcdef01234567", "89abcdef0123456789abcdef0123456789abcdef"  # two commits


def newer_copy(model: Path, folder: Path) -> Path:
    """``model`` with other weights: a later commit of the same model."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(model, folder)
    weights = load_file(folder / "model.safetensors")
    save_file({k: v + 1 if v.is_floating_point() else v for k, v in weights.items()}, folder / "model.safetensors",
              metadata={"format": "pt"})
    return folder


def _files(folder: Path) -> dict[str, Path]:
    return {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()}


class _Handler(BaseHTTPRequestHandler):
    repos: dict[str, list[tuple[str, Path]]]  # repo -> [(commit, folder)], the last one is main
    requests: list[str]
    main_moves: bool  # main is the first commit, then the next each time it is asked
    asked_main: dict[str, int]

    def log_message(self, *args) -> None:  # quiet
        pass

    def _commit(self, repo: str, revision: str):
        commits = self.repos.get(repo)
        if commits is None:
            return None, "RepoNotFound"
        if revision == "main" and self.main_moves:
            asked = self.asked_main[repo] = self.asked_main.get(repo, -1) + 1
            return commits[min(asked, len(commits) - 1)], None
        if revision == "main":
            return commits[-1], None
        found = [c for c in commits if c[0] == revision]
        return (found[0], None) if found else (None, "RevisionNotFound")

    def _error(self, code: str) -> None:
        body = json.dumps({"error": code}).encode()
        self.send_response(404)
        self.send_header("X-Error-Code", code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command == "GET":
            self.wfile.write(body)

    def _json(self, value) -> None:
        body = json.dumps(value).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _serve(self) -> None:
        path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
        self.requests.append(f"{self.command} {path}")
        parts = path.strip("/").split("/")
        if parts[:2] == ["api", "models"] and len(parts) >= 6 and parts[4] in ("revision", "tree"):
            found, error = self._commit("/".join(parts[2:4]), parts[5])
            if error:
                return self._error(error)
            commit, folder = found
            files = _files(folder)
            if parts[4] == "revision":
                return self._json({"id": "/".join(parts[2:4]), "sha": commit,
                                   "siblings": [{"rfilename": name} for name in files]})
            return self._json([{"type": "file", "path": name, "size": p.stat().st_size,
                                "oid": hashlib.sha1(p.read_bytes()).hexdigest()} for name, p in files.items()])
        if len(parts) >= 5 and parts[2] == "resolve":
            found, error = self._commit("/".join(parts[:2]), parts[3])
            if error:
                return self._error(error)
            commit, folder = found
            file = _files(folder).get("/".join(parts[4:]))
            if file is None:
                return self._error("EntryNotFound")
            body = file.read_bytes()
            self.send_response(200)
            self.send_header("X-Repo-Commit", commit)
            self.send_header("ETag", f'"{hashlib.sha256(body).hexdigest()}"')
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command == "GET":
                self.wfile.write(body)
            return None
        return self._error("RepoNotFound")

    do_GET = do_HEAD = _serve


@contextmanager
def fake_hub(repos: dict[str, list[tuple[str, Path]]], main_moves: bool = False):
    """(endpoint URL, the list of requests it answers) while it runs; ``repos`` maps each
    repo to its (commit, folder) history, oldest first, the last being ``main``, or, with
    ``main_moves`` (a hub others push to while a run goes on), main is the oldest when first
    asked and one commit later each time it is asked again."""
    requests: list[str] = []
    handler = type("Handler", (_Handler,), {"repos": repos, "requests": requests, "main_moves": main_moves,
                                            "asked_main": {}})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", requests
    finally:
        server.shutdown()
        server.server_close()
