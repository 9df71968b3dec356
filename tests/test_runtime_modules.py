"""What ships: the modules the nodes import (all imports, also those inside functions) read no set-up files and
pull in no training or harness code; requirements.txt lists exactly their third-party imports; the example inputs
are copied into ComfyUI's input folder; search finds the Invert node."""
import ast
import re
import sys
from importlib import metadata
from pathlib import Path

from harness.paths import PACK_DIR, comfyui_dir

NOT_RUNTIME = re.compile(r"^(embedded/train_.*|embedded/comfy_env\.py|embedded/quality_gates\.py|harness/.*|"
                         r"benchmarks/.*|scripts/.*|tests/.*|workflows/.*)$")


def _relative_targets(path, node):
    """Pack files a relative `from ... import` names (the module, or the submodules it imports by name)."""
    base = path.parent
    for _ in range(node.level - 1):
        base = base.parent
    module = base.joinpath(*node.module.split(".")) if node.module else base
    found = [module.with_suffix(".py")] if module.with_suffix(".py").is_file() else []
    if module.is_dir():
        found.append(module / "__init__.py")
        found += [module / f"{a.name}.py" for a in node.names if (module / f"{a.name}.py").is_file()]
    return found


def runtime_files():
    """{pack-relative path: parsed module} of every module the pack's __init__ reaches through relative imports."""
    seen, todo = {}, [PACK_DIR / "__init__.py"] + sorted((PACK_DIR / "nodes").glob("*.py"))
    while todo:
        path = todo.pop()
        rel = path.relative_to(PACK_DIR).as_posix()
        if rel in seen:
            continue
        seen[rel] = ast.parse(path.read_text())
        todo += [t for n in ast.walk(seen[rel]) if isinstance(n, ast.ImportFrom) and n.level
                 for t in _relative_targets(path, n)]
    return seen


def test_runtime_reads_no_setup_files_and_imports_no_training_code():
    files = runtime_files()
    assert "embedded/domain_encoders.py" in files and "example_inputs.py" in files
    assert not [f for f in files if NOT_RUNTIME.match(f)]
    for f in files:
        text = (PACK_DIR / f).read_text()
        assert ".comfyui_path" not in text and "COMFYUI_DIR" not in text, f


def third_party_imports(files):
    names = set()
    for tree in files.values():
        for n in ast.walk(tree):
            if isinstance(n, ast.Import):
                names |= {a.name.split(".")[0] for a in n.names}
            elif isinstance(n, ast.ImportFrom) and not n.level:
                names.add(n.module.split(".")[0])
    comfy = comfyui_dir()
    provided = {"torch"} | {n for n in names if (comfy / n).is_dir() or (comfy / f"{n}.py").is_file()}
    return names - set(sys.stdlib_module_names) - provided


def requirement_names(path):
    lines = (line.split("#")[0].strip() for line in path.read_text().splitlines())
    return {re.split(r"[<>=!~ \[;]", line)[0].lower().replace("_", "-") for line in lines if line}


def test_requirements_hold_exactly_what_the_runtime_imports():
    distributions = metadata.packages_distributions()
    imported = {distributions[m][0].lower().replace("_", "-") for m in third_party_imports(runtime_files())}
    assert requirement_names(PACK_DIR / "requirements.txt") == imported
    assert not imported & requirement_names(PACK_DIR / "requirements-dev.txt")


def test_example_inputs_are_copied_when_absent_and_never_overwritten(pack, tmp_path):
    example_inputs = pack("example_inputs")
    images = sorted(p.name for p in example_inputs.INPUTS.glob("*.png"))
    assert images and example_inputs.provide(tmp_path / "input") == images
    assert sorted(p.name for p in (tmp_path / "input").iterdir()) == images
    (tmp_path / "input" / images[0]).write_bytes(b"the user's own file")
    assert example_inputs.provide(tmp_path / "input") == []
    assert (tmp_path / "input" / images[0]).read_bytes() == b"the user's own file"


def frontend_search_keys():
    """The node fields ComfyUI's frontend search matches (its Fuse index keys), read from the installed bundle."""
    import comfyui_frontend_package
    static = Path(comfyui_frontend_package.__file__).parent / "static"
    for bundle in sorted(static.glob("assets/*.js")):
        match = re.search(r"nodeFuseSearch=new \w+\(\w+,\{fuseOptions:\{keys:\[([^\]]*)\]", bundle.read_text("utf-8"))
        if match:
            return re.findall(r'"(\w+)"', match.group(1))
    raise AssertionError("the frontend's node search index was not found")


def test_search_finds_the_invert_node_by_inversion_fireflow_and_euler(comfy):
    import nodes
    keys = frontend_search_keys()
    assert set(keys) <= {"name", "display_name", "category", "description", "search_aliases"}, keys
    info = {"name": "AttentionEditInvert", "display_name": nodes.NODE_DISPLAY_NAME_MAPPINGS["AttentionEditInvert"]}
    for term in ("inversion", "FireFlow", "Euler"):
        assert any(term.lower() in str(info.get(key, "")).lower() for key in keys), (term, keys)
