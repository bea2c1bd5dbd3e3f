"""A real Jupyter server from .venv opens the .py notebooks as notebooks and starts the project's kernel."""
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from lib import REPO_ROOT
from lib.infra.runner import KERNEL_NAME

JUPYTER = Path(sys.executable).parent / "jupyter"


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    port, token = _free_port(), "test-token-123"
    runtime = tmp_path_factory.mktemp("jupyter-runtime")
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(runtime)}
    proc = subprocess.Popen(
        [str(JUPYTER), "server", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={REPO_ROOT}", "--allow-root"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    base = f"http://127.0.0.1:{port}"

    def call(method, path, body=None):
        req = urllib.request.Request(base + path, method=method,
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"Authorization": f"token {token}", "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            raw = resp.read()
            return json.loads(raw) if raw else None

    deadline = time.time() + 90
    while True:
        try:
            call("GET", "/api/status")
            break
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                pytest.fail("jupyter server did not start: " + proc.stderr.read().decode()[-2000:])
            time.sleep(0.5)
    call.base, call.token = base, token
    yield call
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


def test_py_notebook_opens_as_notebook_with_parameters_cell(server):
    model = server("GET", "/api/contents/notebooks/01_train.py?type=notebook&content=1")
    assert model["type"] == "notebook"
    cells = model["content"]["cells"]
    tagged = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1 and "profile =" in tagged[0]["source"]
    assert model["content"]["metadata"]["kernelspec"]["name"] == KERNEL_NAME


def test_project_kernel_starts_and_uses_the_venv(server):
    specs = server("GET", "/api/kernelspecs")
    assert KERNEL_NAME in specs["kernelspecs"]
    argv0 = specs["kernelspecs"][KERNEL_NAME]["spec"]["argv"][0]
    assert Path(argv0).resolve().parent == Path(sys.executable).resolve().parent
    kernel = server("POST", "/api/kernels", {"name": KERNEL_NAME})
    try:
        out = _execute(server.base, server.token, kernel["id"], "import sys, lib; print(sys.executable)")
        assert Path(out.strip()).parent == Path(sys.executable).parent
    finally:
        server("DELETE", f"/api/kernels/{kernel['id']}")


def _execute(base, token, kernel_id, code, timeout=90):
    """Run ``code`` in a kernel over the server's websocket; return its stdout."""
    import uuid

    import websocket

    ws = websocket.create_connection(base.replace("http", "ws") + f"/api/kernels/{kernel_id}/channels",
                                     header=[f"Authorization: token {token}"], timeout=timeout)
    msg_id = uuid.uuid4().hex
    ws.send(json.dumps({
        "header": {"msg_id": msg_id, "username": "test", "session": uuid.uuid4().hex, "msg_type": "execute_request",
                   "version": "5.3"},
        "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
        "content": {"code": code, "silent": False, "store_history": False, "user_expressions": {},
                    "allow_stdin": False, "stop_on_error": True}}))
    stdout, deadline = "", time.time() + timeout
    try:
        while time.time() < deadline:
            msg = json.loads(ws.recv())
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind = msg["header"]["msg_type"]
            if kind == "stream":
                stdout += msg["content"]["text"]
            elif kind == "error":
                raise AssertionError("kernel error: " + msg["content"]["evalue"])
            elif kind == "status" and msg["content"]["execution_state"] == "idle":
                return stdout
        raise AssertionError("kernel did not finish in time")
    finally:
        ws.close()


def test_make_lab_passes_allow_root_as_root_and_lab_args():
    """`make lab` as root adds --allow-root (JupyterLab refuses root otherwise); LAB_ARGS reach jupyter lab."""
    out = subprocess.run(["make", "-n", "-o", ".venv/.setup-stamp", "lab",
                          "LAB_ARGS=--no-browser --ip=0.0.0.0 --port=8888"],
                         cwd=REPO_ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    line = next(line for line in out.stdout.replace("\\\n", " ").splitlines() if "jupyter lab" in line)
    assert f"--ServerApp.root_dir={REPO_ROOT}" in line and f"default_kernel_name={KERNEL_NAME}" in line
    assert line.rstrip().endswith("--no-browser --ip=0.0.0.0 --port=8888")
    assert ("--allow-root" in line) == (os.geteuid() == 0)
