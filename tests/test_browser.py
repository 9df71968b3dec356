"""Every UI workflow loads in the real ComfyUI frontend (comfyui-frontend-package) in headless Chromium.

Starts main.py with the real web UI and the pack, opens it in Debian's /usr/bin/chromium driven by playwright
(no browser download; only 127.0.0.1 is reachable), loads each workflows/ui/*.json through the frontend's
`app.loadGraphData`, and fails on node types the frontend does not know, placeholder (errored) nodes, a dialog
(e.g. "missing nodes"), console errors or page errors, or a node/link/widget mismatch with the JSON. A
screenshot of each loaded graph goes to output/browser/<name>.png. Loads only; nothing is executed.
"""
import json
import shutil
import tempfile
import urllib.parse
from pathlib import Path

import pytest

from harness.server import ComfyServer

ROOT = Path(__file__).resolve().parent.parent
UI_DIR = ROOT / "workflows" / "ui"
INPUTS = ROOT / "workflows" / "inputs"
SHOTS = ROOT / "output" / "browser"
CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage"]
WORKFLOW_NAMES = sorted(p.stem for p in UI_DIR.glob("*.json"))

# Console messages that are not load errors: 404s for a fresh user's optional files (user.css, templates), the
# server's own Content-Security-Policy refusing the frontend's call to api.comfy.org (nothing leaves loopback),
# and a frontend 1.32.9 start-up bug (its render-mode setting watcher sets a setting that has no definition).
BENIGN_CONSOLE = ("Failed to load resource: the server responded with a status of 404",
                  "violates the following Content Security Policy directive",
                  "TypeError: Cannot read properties of undefined (reading 'id')\n    at onChange ")

READY_JS = """() => !!(window.app && window.app.graph && window.app.canvas && window.LiteGraph
    && Object.keys(window.LiteGraph.registered_node_types).length > 50)"""

LOAD_JS = """async ([workflow, name]) => {
    const registered = LiteGraph.registered_node_types;
    const unknown = workflow.nodes.map(n => n.type).filter(t => !(t in registered));
    await app.loadGraphData(workflow, true, true, name);
    await new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)));
    const graph = app.graph;
    const saved = graph.serialize();
    const nodes = graph.nodes ?? graph._nodes;
    // Frame the whole graph for the screenshot (padded: the tab bar and toolbars overlay the canvas's top).
    const b = [Infinity, Infinity, -Infinity, -Infinity];
    for (const n of nodes) {
        b[0] = Math.min(b[0], n.pos[0]); b[1] = Math.min(b[1], n.pos[1] - 30);
        b[2] = Math.max(b[2], n.pos[0] + n.size[0]); b[3] = Math.max(b[3], n.pos[1] + n.size[1]);
    }
    const w = b[2] - b[0], h = b[3] - b[1];
    const canvas = app.canvas;
    canvas.ds.fitToBounds([b[0] - 0.05 * w, b[1] - 0.2 * h, 1.08 * w, 1.25 * h], {zoom: 1});
    canvas.setDirty(true, true);
    canvas.draw(true, true);
    return {
        unknown,
        node_count: nodes.length,
        link_count: saved.links.length,
        errored: nodes.filter(n => n.has_errors || !(n.type in registered)).map(n => `${n.id}:${n.type}`),
        nodes: saved.nodes.map(n => ({id: n.id, type: n.type, title: n.title ?? null,
                                      widgets_values: n.widgets_values ?? []})),
        links: saved.links.map(l => Array.isArray(l) ? l.slice(0, 5)
                                                     : [l.id, l.origin_id, l.origin_slot, l.target_id, l.target_slot]),
    };
}"""

DIALOGS_JS = """() => Array.from(document.querySelectorAll('.p-dialog, [role="dialog"], [role="alertdialog"]'))
    .filter(d => d.offsetParent !== null || d.getClientRects().length > 0)
    .map(d => d.innerText.trim().slice(0, 500))"""


def _only_loopback(route):
    host = urllib.parse.urlsplit(route.request.url).hostname
    if host in ("127.0.0.1", "localhost") or route.request.url.startswith(("data:", "blob:")):
        route.continue_()
    else:
        route.abort()


@pytest.fixture(scope="module")
def page():
    """The ComfyUI web UI, ready (app + node definitions loaded), in headless Chromium; yields (page, log)."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} missing: run scripts/setup.sh (installs Debian's chromium)")
    from playwright import sync_api  # installed by scripts/setup.sh
    profile = Path(tempfile.mkdtemp(prefix="chromium-profile-"))
    log = {"console": [], "page": [], "blocked": []}
    with ComfyServer(frontend=True, threads=1) as server, sync_api.sync_playwright() as pw:
        for image in INPUTS.glob("*.png"):  # the combo lists then hold the workflows' input images
            shutil.copy(image, server.base / "input" / image.name)
        # A fresh user: skip the first-run templates browser so no dialog hides the graph.
        for key, value in (("Comfy.TutorialCompleted", True),):
            server.request("POST", f"/settings/{key}", value)
        context = pw.chromium.launch_persistent_context(
            str(profile), executable_path=str(CHROMIUM), headless=True, args=FLAGS,
            viewport={"width": 1920, "height": 1080}, ignore_default_args=["--enable-automation"])
        try:
            context.route("**/*", _only_loopback)
            pg = context.pages[0] if context.pages else context.new_page()
            pg.on("console", lambda m: m.type == "error" and log["console"].append(m.text))
            pg.on("pageerror", lambda e: log["page"].append(str(e)))
            pg.on("requestfailed", lambda r: log["blocked"].append(r.url))
            pg.goto(server.url, wait_until="domcontentloaded", timeout=120_000)
            pg.wait_for_function(READY_JS, timeout=150_000, polling=500)
            # Draw node text at any zoom, so a whole graph in one screenshot stays readable.
            pg.evaluate("() => app.extensionManager.setting.set('LiteGraph.Canvas.MinFontSizeForLOD', 1)")
            pg.wait_for_timeout(1000)
            yield pg, log, server
        finally:
            context.close()
            shutil.rmtree(profile, ignore_errors=True)


def load_errors(log):
    return ([m for m in log["console"] if not any(b in m for b in BENIGN_CONSOLE)] + log["page"])


def test_frontend_starts_without_errors(page):
    pg, log, server = page
    assert pg.evaluate("() => typeof app.loadGraphData") == "function"
    assert not load_errors(log), load_errors(log)
    registered = set(pg.evaluate("() => Object.keys(LiteGraph.registered_node_types)"))
    pack_nodes = {name for name, node in server.object_info().items() if node["python_module"].startswith("custom_nodes.")}
    assert pack_nodes and pack_nodes <= registered, sorted(pack_nodes - registered)


@pytest.mark.parametrize("name", WORKFLOW_NAMES)
def test_workflow_loads_in_frontend(page, name):
    pg, log, _ = page
    workflow = json.loads((UI_DIR / f"{name}.json").read_text())
    log["console"].clear(), log["page"].clear()
    result = pg.evaluate(LOAD_JS, [workflow, name])
    pg.wait_for_timeout(300)
    dialogs = pg.evaluate(DIALOGS_JS)
    SHOTS.mkdir(parents=True, exist_ok=True)
    pg.screenshot(path=str(SHOTS / f"{name}.png"))

    assert result["unknown"] == [], f"node types the frontend does not know: {result['unknown']}"
    assert result["errored"] == [], f"nodes the frontend could not create: {result['errored']}"
    assert not dialogs, f"dialog after loading: {dialogs}"
    assert not load_errors(log), load_errors(log)
    assert result["node_count"] == len(workflow["nodes"])
    assert result["link_count"] == len(workflow["links"])
    assert sorted(map(tuple, result["links"])) == sorted(tuple(link[:5]) for link in workflow["links"])
    loaded = {n["id"]: n for n in result["nodes"]}
    for node in workflow["nodes"]:
        got = loaded[node["id"]]
        assert got["type"] == node["type"]
        # exactly what the file holds, including the image-upload widget's "image" on LoadImage / LoadImageMask
        assert got["widgets_values"] == node["widgets_values"], (node["id"], node["type"], got["widgets_values"])
        if "title" in node:
            assert got["title"] == node["title"]


def test_a_missing_node_type_is_caught(page):
    """The same checks see an unknown node type: it is reported, becomes an errored placeholder, and a dialog shows."""
    pg, log, _ = page
    workflow = json.loads((UI_DIR / "invert_edit_embedded_unet.json").read_text())
    workflow["nodes"][0]["type"] = "AttentionEditNoSuchNode"
    result = pg.evaluate(LOAD_JS, [workflow, "broken"])
    pg.wait_for_timeout(500)
    dialogs = pg.evaluate(DIALOGS_JS)
    assert result["unknown"] == ["AttentionEditNoSuchNode"]
    assert result["errored"]
    assert any("AttentionEditNoSuchNode" in d for d in dialogs), dialogs
    pg.keyboard.press("Escape")
    pg.evaluate("() => document.querySelectorAll('.p-dialog-close-button, [aria-label=\"Close\"]').forEach(b => b.click())")
    pg.wait_for_timeout(300)
    log["console"].clear(), log["page"].clear()
