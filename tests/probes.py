"""A pass-through attention controller for tests: records what every Edit Sampler call carries."""
from collections import namedtuple

Seen = namedtuple("Seen", "kind layer step q k v roles conds img txt grid")


class EditProbe:
    """Appends a Seen (copies of q, k, v and the call's layout) to `log` for every edit-phase call; placed before
    and after a technique in the chain, the two logs show exactly what the technique changed."""
    kinds = ("self", "cross", "joint")

    def __init__(self, log):
        self.log = log

    def wants(self, call):
        return call.run is not None and call.run.phase == "edit"

    def before(self, call):
        self.log.append(Seen(call.kind, call.layer, call.step, call.q.clone(), call.k.clone(), call.v.clone(),
                             tuple(call.roles), tuple(call.conds), call.img, call.txt, call.grid))

    def after(self, call, out):
        return out

    def __deepcopy__(self, memo):
        return self
