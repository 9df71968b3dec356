"""Convert API-format prompts to the UI (LiteGraph) workflow format the ComfyUI frontend loads and saves,
and check UI workflows against node definitions. Node definitions come from the node classes ComfyUI loaded."""
import collections

WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")
SEED_NAMES = ("seed", "noise_seed")
# The frontend (extensions/core/uploadImage) gives a node whose required inputs include one with image_upload an
# extra required input "upload" (IMAGEUPLOAD) after the other required ones; its widget saves the value "image":
# LoadImage -> [filename, "image"], LoadImageMask -> [filename, channel, "image"].
UPLOAD_VALUE = "image"


def node_class(class_type):
    import nodes
    cls = nodes.NODE_CLASS_MAPPINGS.get(class_type)
    if cls is None:
        raise KeyError(f"unknown node type {class_type}")
    return cls


def display_name(class_type):
    """The title the frontend gives a new node of this type: its display name in /object_info, else the class name."""
    import nodes
    node_class(class_type)
    return nodes.NODE_DISPLAY_NAME_MAPPINGS.get(class_type, class_type)


def input_specs(cls):
    """[(name, spec)] of required then optional inputs, in definition order, with the frontend's image-upload
    widget ("upload", ("IMAGEUPLOAD",)) after the required ones where a required input has image_upload."""
    types = cls.INPUT_TYPES()
    required = list(types.get("required", {}).items())
    if any(len(spec) > 1 and isinstance(spec[1], dict) and spec[1].get("image_upload") for _, spec in required):
        required.append(("upload", ("IMAGEUPLOAD",)))
    return required + list(types.get("optional", {}).items())


def is_upload(spec):
    return spec[0] == "IMAGEUPLOAD"


def is_widget(spec):
    return isinstance(spec[0], (list, tuple)) or spec[0] in WIDGET_TYPES or is_upload(spec)


def has_seed_control(name, spec):
    options = spec[1] if len(spec) > 1 else {}
    return spec[0] == "INT" and (name in SEED_NAMES or options.get("control_after_generate", False))


def _depths(prompt):
    depth = {}

    def visit(node_id):
        if node_id not in depth:
            parents = [v[0] for v in prompt[node_id]["inputs"].values() if isinstance(v, list)]
            depth[node_id] = 1 + max((visit(p) for p in parents), default=-1)
        return depth[node_id]
    for node_id in prompt:
        visit(node_id)
    return depth


def api_to_ui(prompt, titles=None):
    """A UI-format workflow (version 0.4) equivalent to an API-format prompt with integer-like node ids."""
    titles = titles or {}
    depth = _depths(prompt)
    column_count = collections.Counter()
    links, ui_nodes = [], {}
    for order, node_id in enumerate(sorted(prompt, key=lambda n: (depth[n], int(n)))):
        node = prompt[node_id]
        cls = node_class(node["class_type"])
        inputs, widgets = [], []
        for name, spec in input_specs(cls):
            value = UPLOAD_VALUE if is_upload(spec) else node["inputs"].get(name)
            if is_widget(spec) and not isinstance(value, list):
                options = spec[1] if len(spec) > 1 else {}
                widgets.append(options.get("default", spec[0][0] if isinstance(spec[0], (list, tuple)) else None)
                               if value is None else value)
                if has_seed_control(name, spec):
                    widgets.append("fixed")
            elif isinstance(value, list) or not is_widget(spec):
                entry = {"name": name, "type": "COMBO" if isinstance(spec[0], (list, tuple)) else spec[0], "link": None}
                if is_widget(spec):
                    entry["widget"] = {"name": name}
                if isinstance(value, list):
                    links.append([len(links) + 1, int(value[0]), value[1], int(node_id), len(inputs), entry["type"]])
                    entry["link"] = len(links)
                inputs.append(entry)
        names = getattr(cls, "RETURN_NAMES", None) or cls.RETURN_TYPES
        outputs = [{"name": n, "type": t, "links": [], "slot_index": i}
                   for i, (n, t) in enumerate(zip(names, cls.RETURN_TYPES))]
        x, y = 40 + 380 * depth[node_id], 40 + 260 * column_count[depth[node_id]]
        column_count[depth[node_id]] += 1
        ui_nodes[node_id] = {"id": int(node_id), "type": node["class_type"], "pos": [x, y], "size": [340, 200],
                             "flags": {}, "order": order, "mode": 0, "inputs": inputs, "outputs": outputs,
                             "properties": {"Node name for S&R": node["class_type"]}, "widgets_values": widgets}
        if node_id in titles:
            ui_nodes[node_id]["title"] = titles[node_id]
    for link in links:  # fill the source side now that every node exists
        ui_nodes[str(link[1])]["outputs"][link[2]]["links"].append(link[0])
    for node in ui_nodes.values():
        for out in node["outputs"]:
            out["links"] = out["links"] or None
    return {"last_node_id": max(int(n) for n in prompt), "last_link_id": len(links),
            "nodes": [ui_nodes[n] for n in sorted(ui_nodes, key=int)], "links": links, "groups": [],
            "config": {}, "extra": {"ds": {"scale": 0.8, "offset": [0, 0]}}, "version": 0.4}


def check_ui_workflow(workflow, file_inputs_ok=True):
    """Problems (list of strings) of a UI workflow against the loaded node definitions: node types, links
    (slots and types) and widget values (count, combo choices, numeric ranges)."""
    problems = []
    by_id = {n["id"]: n for n in workflow["nodes"]}
    for node in workflow["nodes"]:
        try:
            cls = node_class(node["type"])
        except KeyError as e:
            problems.append(str(e))
            continue
        specs = input_specs(cls)
        linked = {i["name"] for i in node.get("inputs", []) if i.get("link") is not None}
        expected = []
        for name, spec in specs:
            if is_widget(spec) and name not in linked:
                expected.append((name, spec))
                if has_seed_control(name, spec):
                    expected.append((name + ":control", ("COMBO_CONTROL",)))
        values = node.get("widgets_values", [])
        if len(values) != len(expected):
            problems.append(f"node {node['id']} {node['type']}: {len(values)} widget values, expected {len(expected)}")
            continue
        for (name, spec), value in zip(expected, values):
            options = spec[1] if len(spec) > 1 else {}
            if is_upload(spec):
                if value != UPLOAD_VALUE:
                    problems.append(f"node {node['id']} {node['type']}: image-upload widget value {value!r}, the "
                                    f"frontend saves {UPLOAD_VALUE!r}")
            elif isinstance(spec[0], (list, tuple)):
                if value not in spec[0] and not (file_inputs_ok and (name.endswith("_name") or name[:-1].endswith("_name") or name == "image")):
                    problems.append(f"node {node['id']} {node['type']}: {name}={value!r} not in {list(spec[0])[:8]}")
            elif spec[0] in ("INT", "FLOAT"):
                if not isinstance(value, (int, float)) or not options.get("min", -1e30) <= value <= options.get("max", 1e30):
                    problems.append(f"node {node['id']} {node['type']}: {name}={value!r} out of range")
            elif spec[0] == "BOOLEAN" and not isinstance(value, bool):
                problems.append(f"node {node['id']} {node['type']}: {name}={value!r} is not a boolean")
    for link_id, src, src_slot, dst, dst_slot, ltype in workflow["links"]:
        if src not in by_id or dst not in by_id:
            problems.append(f"link {link_id}: missing node")
            continue
        try:
            out_type = node_class(by_id[src]["type"]).RETURN_TYPES[src_slot]
            dst_input = by_id[dst]["inputs"][dst_slot]
        except (KeyError, IndexError):
            problems.append(f"link {link_id}: bad slot")
            continue
        spec = dict(input_specs(node_class(by_id[dst]["type"]))).get(dst_input["name"])
        want = "COMBO" if spec and isinstance(spec[0], (list, tuple)) else (spec[0] if spec else None)
        if dst_input.get("link") != link_id or want is None or (out_type != want and want != "*"):
            problems.append(f"link {link_id}: {by_id[src]['type']}[{src_slot}] {out_type} -> "
                            f"{by_id[dst]['type']}.{dst_input['name']} {want}")
    return problems
