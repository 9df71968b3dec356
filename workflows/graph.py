"""A small builder for API-format ComfyUI prompts: `g.add("KSampler", model=m[0], ...)` returns a node handle
whose items are output links."""
from harness.workflow_format import display_name


class Node:
    def __init__(self, node_id):
        self.id = node_id

    def __getitem__(self, slot):
        return [self.id, slot]


class Graph:
    def __init__(self):
        self.prompt = {}
        self.titles = {}

    def add(self, class_type, title=None, **inputs):
        node_id = str(len(self.prompt) + 1)
        self.prompt[node_id] = {"class_type": class_type, "inputs": inputs}
        if title:  # a UI title of our own; scripts find nodes by it
            self.titles[node_id] = title
        # every node is titled in the API prompt, as the frontend's Export (API) writes it (default: display name)
        self.prompt[node_id]["_meta"] = {"title": title or display_name(class_type)}
        return Node(node_id)
