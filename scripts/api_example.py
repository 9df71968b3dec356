"""Headless API example: edit a new image with an example workflow through ComfyUI's HTTP API.

    .venv/bin/python scripts/api_example.py --image my.png \
        --source-prompt "a red circle on a blue background" --target-prompt "a yellow circle on a blue background"
    .venv/bin/python scripts/api_example.py --url http://127.0.0.1:8188 --image my.png ...   # a running ComfyUI

What it does, with nothing but ComfyUI's public endpoints:
  1. without --url, starts ComfyUI's main.py on 127.0.0.1 with this pack (harness.server.ComfyServer);
  2. POST /upload/image (multipart form: image, type=input, overwrite) puts the image into ComfyUI's input folder;
  3. loads an API-format workflow (default workflows/api/proedit_embedded_unet.json), points its LoadImage node at
     the upload and sets the texts of the CLIPTextEncode nodes titled "source prompt" / "target prompt"
     (`_meta.title`; without titles the first two CLIPTextEncode nodes, in id order);
  4. POST /prompt, then polls GET /history/<prompt_id> until the prompt has finished;
  5. downloads every output image through GET /view into --out and prints the paths.
The embedded workflows work on 64x64 images (the shapes domain); the sd15/sdxl/flux_dev variants need those
checkpoints in ComfyUI's models folders.
"""
import argparse
import json
import mimetypes
import sys
import time
import uuid
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_WORKFLOW = ROOT / "workflows" / "api" / "proedit_embedded_unet.json"


class ComfyClient:
    """The few ComfyUI HTTP endpoints the example needs (no proxies: ComfyUI is usually on loopback)."""

    def __init__(self, url, timeout=30):
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.http = requests.Session()
        self.http.trust_env = False

    def _check(self, resp, what):
        if resp.status_code != 200:
            raise RuntimeError(f"{what} returned HTTP {resp.status_code}: {resp.text[:2000]}")
        return resp

    def ping(self):
        return self._check(self.http.get(self.url + "/system_stats", timeout=self.timeout), "GET /system_stats").json()

    def upload_image(self, path):
        """POST /upload/image; returns the name to give LoadImage ("subfolder/name" when in a subfolder)."""
        path = Path(path)
        mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        with open(path, "rb") as f:
            resp = self.http.post(self.url + "/upload/image", files={"image": (path.name, f, mime)},
                                  data={"type": "input", "overwrite": "true"}, timeout=self.timeout)
        info = self._check(resp, "POST /upload/image").json()
        return f"{info['subfolder']}/{info['name']}" if info.get("subfolder") else info["name"]

    def queue(self, prompt, client_id=None):
        """POST /prompt; returns the prompt id. A prompt ComfyUI rejects, or one with node errors, raises."""
        resp = self.http.post(self.url + "/prompt", json={"prompt": prompt, "client_id": client_id or uuid.uuid4().hex},
                              timeout=self.timeout)
        body = self._check(resp, "POST /prompt").json()
        if body.get("node_errors"):
            raise RuntimeError(f"ComfyUI reported node errors: {json.dumps(body['node_errors'])[:2000]}")
        return body["prompt_id"]

    def wait(self, prompt_id, timeout=600.0, poll=0.5):
        """Poll GET /history/<prompt_id> until the prompt finished; raises on an execution error or timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            history = self._check(self.http.get(f"{self.url}/history/{prompt_id}", timeout=self.timeout),
                                  "GET /history").json()
            entry = history.get(prompt_id)
            status = (entry or {}).get("status", {})
            if status.get("status_str") == "error":
                errors = [m[1] for m in status.get("messages", []) if m[0] == "execution_error"]
                detail = errors[0].get("exception_message", "").strip() if errors else "unknown error"
                raise RuntimeError(f"prompt {prompt_id} failed: {detail}")
            if status.get("completed"):
                return entry
            time.sleep(poll)
        raise TimeoutError(f"prompt {prompt_id} did not finish within {timeout:.0f} s")

    def download(self, file):
        """GET /view of one output entry ({"filename", "subfolder", "type"}); returns the bytes."""
        params = {"filename": file["filename"], "subfolder": file.get("subfolder", ""), "type": file.get("type", "output")}
        return self._check(self.http.get(self.url + "/view", params=params, timeout=self.timeout), "GET /view").content


def find_prompt_nodes(prompt):
    """(source id, target id): CLIPTextEncode nodes titled "source prompt" / "target prompt", else the first two."""
    encoders = sorted((n for n, node in prompt.items() if node["class_type"] == "CLIPTextEncode"), key=_id_key)
    titled = {prompt[n].get("_meta", {}).get("title", "").strip().lower(): n for n in encoders}
    if "source prompt" in titled and "target prompt" in titled:
        return titled["source prompt"], titled["target prompt"]
    if len(encoders) < 2:
        raise ValueError("the workflow needs two CLIPTextEncode nodes (source and target prompt)")
    return encoders[0], encoders[1]


def _id_key(node_id):
    return (0, int(node_id), "") if str(node_id).isdigit() else (1, 0, str(node_id))


def prepare(prompt, image_name, source_prompt=None, target_prompt=None, steps=None):
    """A copy of an API-format prompt with the uploaded image, the prompts and (optionally) the steps set."""
    if not isinstance(prompt, dict) or "nodes" in prompt or not all(
            isinstance(n, dict) and "class_type" in n for n in prompt.values()):
        raise ValueError("not an API-format workflow ({id: {class_type, inputs}}); export one with "
                         "'Export (API)' in ComfyUI or use workflows/api/*.json")
    prompt = json.loads(json.dumps(prompt))
    loaders = [n for n, node in prompt.items() if node["class_type"] == "LoadImage"]
    if len(loaders) != 1:
        raise ValueError(f"the workflow needs exactly one LoadImage node, it has {len(loaders)}")
    prompt[loaders[0]]["inputs"]["image"] = image_name
    source, target = find_prompt_nodes(prompt)
    if source_prompt is not None:
        prompt[source]["inputs"]["text"] = source_prompt
    if target_prompt is not None:
        prompt[target]["inputs"]["text"] = target_prompt
    if steps is not None:
        for node in prompt.values():
            if isinstance(node["inputs"].get("steps"), int):
                node["inputs"]["steps"] = steps
    return prompt


def output_images(entry):
    """Every saved image ("type": "output") the finished prompt's history entry lists, as [(node id, file)]."""
    found = []
    for node_id, out in entry.get("outputs", {}).items():
        found += [(node_id, f) for f in out.get("images", []) if f.get("type", "output") == "output"]
    return found


def run(client, workflow, image, out, source_prompt=None, target_prompt=None, steps=None, timeout=600.0):
    """Upload, queue, wait, download; returns the written paths."""
    prompt = prepare(json.loads(Path(workflow).read_text()), client.upload_image(image), source_prompt,
                     target_prompt, steps)
    prompt_id = client.queue(prompt)
    print(f"queued {prompt_id}; waiting", flush=True)
    entry = client.wait(prompt_id, timeout)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for node_id, file in output_images(entry):
        path = out / Path(file["filename"]).name
        path.write_bytes(client.download(file))
        written.append(path)
        print(f"node {node_id}: {path}")
    if not written:
        raise RuntimeError(f"prompt {prompt_id} finished without output images")
    return written


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workflow", default=str(DEFAULT_WORKFLOW), help="API-format workflow JSON")
    parser.add_argument("--image", required=True, help="the image to edit (uploaded through /upload/image)")
    parser.add_argument("--source-prompt", help="describes the input image (default: the workflow's text)")
    parser.add_argument("--target-prompt", help="describes the wanted edit (default: the workflow's text)")
    parser.add_argument("--out", default=str(ROOT / "output" / "api_example"), help="folder for the results")
    parser.add_argument("--url", help="a running ComfyUI (e.g. http://127.0.0.1:8188); default: start one here")
    parser.add_argument("--steps", type=int, help="override every node's integer 'steps' input (fewer = faster)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the result")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of a server started here")
    args = parser.parse_args(argv)
    if not Path(args.image).is_file():
        parser.error(f"--image {args.image}: no such file")
    if not Path(args.workflow).is_file():
        parser.error(f"--workflow {args.workflow}: no such file")
    options = dict(source_prompt=args.source_prompt, target_prompt=args.target_prompt, steps=args.steps,
                   timeout=args.timeout)
    if args.url:
        client = ComfyClient(args.url)
        client.ping()
        return run(client, args.workflow, args.image, args.out, **options)
    sys.path.insert(0, str(ROOT))
    from harness.server import ComfyServer
    with ComfyServer(threads=args.threads) as server:
        print(f"started ComfyUI at {server.url}", flush=True)
        return run(ComfyClient(server.url), args.workflow, args.image, args.out, **options)


if __name__ == "__main__":
    main()
