"""Run ComfyUI's own main.py as a loopback-only server subprocess with the pack in its custom_nodes folder.

    with ComfyServer(extra_nodes=[tests_dir / "fixture_nodes"]) as server:
        entry = server.run(prompt)                  # POST /prompt, poll /history/<id>
        data = server.view(entry["outputs"]["9"]["images"][0])

Every server gets a fresh base directory (custom_nodes, input, output, temp, user) and a free port on
127.0.0.1, and is always stopped (terminate, then kill) when the context exits.
"""
import json
import re
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

from .paths import PACK_DIR, comfyui_dir

HOST = "127.0.0.1"
_LOCAL = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never route through a proxy


class ServerError(RuntimeError):
    """The server failed to start, rejected a prompt, or a prompt failed; `.details` has what it said."""

    def __init__(self, message, details=None):
        super().__init__(message)
        self.details = details


def pack_folder_name():
    """The name the pack gets inside custom_nodes: the project name from pyproject.toml."""
    try:
        match = re.search(r'^name\s*=\s*"([^"]+)"', (PACK_DIR / "pyproject.toml").read_text(), re.M)
    except OSError:
        match = None
    return match.group(1) if match else PACK_DIR.name


def free_port():
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class ComfyServer:
    """A ComfyUI server subprocess on 127.0.0.1; use as a context manager.

    extra_nodes: more custom-node folders to link into custom_nodes (e.g. tests/fixture_nodes).
    frontend: serve the real web UI from comfyui-frontend-package; otherwise an empty stub web root.
    threads: torch threads for the server process (OMP_NUM_THREADS); None leaves the environment alone.
    comfyui: the ComfyUI tree whose main.py runs (default: the one scripts/setup.sh recorded).
    base: a ComfyUI base directory used as it is (its custom_nodes as installed; kept on stop); default: a
        temporary one with this pack linked into custom_nodes, deleted on stop.
    """

    def __init__(self, extra_nodes=(), frontend=False, startup_timeout=180.0, threads=None, extra_args=(),
                 python=None, comfyui=None, base=None):
        self.extra_nodes = [Path(p).resolve() for p in extra_nodes]
        self.comfyui = Path(comfyui).resolve() if comfyui else None
        self.given_base = Path(base).resolve() if base else None
        self.frontend = frontend
        self.startup_timeout = startup_timeout
        self.threads = threads
        self.extra_args = list(extra_args)
        self.python = python or sys.executable
        self.process = None
        self.base = None
        self.port = None
        self._log = None

    # -- lifecycle -------------------------------------------------------------------------------------------
    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()
        return False

    def root(self):
        return self.comfyui or comfyui_dir()

    def _prepare_base(self):
        if self.given_base is not None:
            self.base = self.given_base
        else:
            self.base = Path(tempfile.mkdtemp(prefix="comfy-server-"))
            nodes_dir = self.base / "custom_nodes"
            nodes_dir.mkdir()
            (nodes_dir / pack_folder_name()).symlink_to(PACK_DIR, target_is_directory=True)
            for folder in self.extra_nodes:
                (nodes_dir / folder.name).symlink_to(folder, target_is_directory=folder.is_dir())
            for sub in ("input", "output", "user"):
                (self.base / sub).mkdir()
        if not self.frontend:
            web = self.base / "web"
            web.mkdir(exist_ok=True)
            (web / "index.html").write_text("<!doctype html><title>ComfyUI (headless)</title>\n")

    def command(self):
        """The main.py command line."""
        cmd = [self.python, str(self.root() / "main.py"), "--cpu", "--listen", HOST, "--port", str(self.port),
               "--base-directory", str(self.base), "--disable-api-nodes", "--database-url", "sqlite:///:memory:",
               "--disable-auto-launch"]
        if not self.frontend:
            cmd += ["--front-end-root", str(self.base / "web")]
        return cmd + self.extra_args

    def start(self):
        """Start main.py and wait until it answers; on failure stop it and raise with the log tail."""
        if self.process is not None:
            return self
        self._prepare_base()
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env.pop("COMFYUI_DIR", None)  # the pack's runtime must not need it (only the harness and scripts read it)
        for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
            env.pop(var, None)
        if self.threads is not None:
            env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(self.threads)
        try:
            for attempt in range(3):  # the port can be taken between free_port() and the bind
                self.port = free_port()
                self._log = open(self.base / "server.log", "wb")
                self.process = subprocess.Popen(self.command(), cwd=str(self.root()), env=env,
                                                stdin=subprocess.DEVNULL, stdout=self._log,
                                                stderr=subprocess.STDOUT, start_new_session=True)
                if self._wait_ready():
                    return self
                if "address already in use" not in self.log().lower() or attempt == 2:
                    break
                self._end_process()
            raise ServerError(f"ComfyUI server did not start within {self.startup_timeout:.0f} s "
                              f"(exit code {self.process.poll()}); log tail:\n{self.log_tail()}")
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self):
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            try:
                status, _ = self.request("GET", "/system_stats", timeout=2)
                if status == 200:
                    return True
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.25)
        return False

    def _end_process(self):
        proc, self.process = self.process, None
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)  # own session: also ends any children it started
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=10)
        if self._log is not None:
            self._log.close()
            self._log = None

    def stop(self, keep_files=False):
        """Stop the server (terminate, then kill after 10 s) and delete its base directory."""
        self._end_process()
        if self.base is not None and not keep_files:
            self.final_log = self.log()
            if self.given_base is None:
                shutil.rmtree(self.base, ignore_errors=True)
            self.base = None

    # -- logs ------------------------------------------------------------------------------------------------
    def log(self):
        """Everything the server printed so far."""
        if self.base is None:
            return getattr(self, "final_log", "")
        try:
            return (self.base / "server.log").read_bytes().decode("utf-8", "replace")
        except OSError:
            return ""

    def log_tail(self, lines=40):
        return "\n".join(self.log().splitlines()[-lines:])

    # -- HTTP ------------------------------------------------------------------------------------------------
    @property
    def url(self):
        return f"http://{HOST}:{self.port}"

    def request(self, method, path, body=None, timeout=30):
        """(status, body) of one request to this server; JSON bodies are encoded/decoded."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"} if data else {})
        try:
            with _LOCAL.open(req, timeout=timeout) as resp:
                status, raw, ctype = resp.status, resp.read(), resp.headers.get("Content-Type", "")
        except urllib.error.HTTPError as err:
            status, raw, ctype = err.code, err.read(), err.headers.get("Content-Type", "")
        if "json" in ctype:
            return status, json.loads(raw or b"null")
        return status, raw

    def get_json(self, path):
        status, body = self.request("GET", path)
        if status != 200:
            raise ServerError(f"GET {path} returned {status}", body)
        return body

    def object_info(self):
        return self.get_json("/object_info")

    def queue(self, prompt, client_id=None, strict=True):
        """POST /prompt; returns the prompt id. A rejected prompt raises ServerError with ComfyUI's JSON.

        ComfyUI accepts a prompt when some outputs are valid and silently drops the others; with strict,
        any node error raises instead (the prompt may already be queued: it is deleted from the queue).
        """
        status, body = self.request("POST", "/prompt", {"prompt": prompt, "client_id": client_id or uuid.uuid4().hex})
        if status != 200:
            raise ServerError(f"POST /prompt returned {status}: {json.dumps(body)[:2000]}", body)
        if strict and body.get("node_errors"):
            self.request("POST", "/queue", {"delete": [body["prompt_id"]]})
            raise ServerError(f"prompt has node errors: {json.dumps(body['node_errors'])[:2000]}", body)
        return body["prompt_id"]

    def wait(self, prompt_id, timeout=120.0):
        """Poll GET /history/<id> until the prompt has finished; returns its history entry."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            entry = self.get_json(f"/history/{prompt_id}").get(prompt_id)
            if entry and entry.get("status", {}).get("completed") is not None and (
                    entry["status"].get("completed") or entry["status"].get("status_str") == "error"):
                return entry
            if self.process is None or self.process.poll() is not None:
                raise ServerError(f"ComfyUI server exited while running {prompt_id}; log tail:\n{self.log_tail()}")
            time.sleep(0.2)
        raise ServerError(f"prompt {prompt_id} did not finish within {timeout:.0f} s; log tail:\n{self.log_tail()}")

    def run(self, prompt, timeout=120.0, check=True):
        """Queue a prompt and wait for it; with check, an execution error raises ServerError."""
        entry = self.wait(self.queue(prompt), timeout)
        if check and entry["status"].get("status_str") != "success":
            errors = [m for m in entry["status"].get("messages", []) if m[0] == "execution_error"]
            detail = errors[0][1].get("exception_message", "").strip() if errors else "unknown error"
            raise ServerError(f"prompt failed: {detail}", entry)
        return entry

    def view(self, file):
        """Download an output file (an entry like {"filename", "subfolder", "type"}) through GET /view."""
        query = urllib.parse.urlencode({"filename": file["filename"], "subfolder": file.get("subfolder", ""),
                                        "type": file.get("type", "output")})
        status, body = self.request("GET", "/view?" + query)
        if status != 200:
            raise ServerError(f"GET /view?{query} returned {status}", body)
        return body

    def output_files(self, entry, key=None):
        """[(node_id, file entry)] of every file a history entry's outputs list (only `key`, e.g. "images")."""
        found = []
        for node_id, out in entry.get("outputs", {}).items():
            for name, items in out.items():
                if (key is None or name == key) and isinstance(items, list):
                    found += [(node_id, f) for f in items if isinstance(f, dict) and "filename" in f]
        return found
