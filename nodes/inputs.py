"""Shared node-input helpers: parsing, and the pack's custom types and category."""
CATEGORY = "image_edit"
INVERSION = "EDIT_INVERSION"


def parse_steps(text, total=None, name="steps"):
    """'0-4, 7' -> {0, 1, 2, 3, 4, 7}; a clear error names the input."""
    chosen = set()
    for part in (p.strip() for p in str(text).split(",")):
        if not part:
            continue
        try:
            if "-" in part:
                lo, hi = (int(v) for v in part.split("-", 1))
                chosen.update(range(lo, hi + 1))
            else:
                chosen.add(int(part))
        except ValueError:
            raise ValueError(f"{name}: '{part}' is not a step index or range (write e.g. '0-4, 7')") from None
    if total is not None and any(s < 0 or s >= total for s in chosen):
        raise ValueError(f"{name}: step indices must lie in 0..{total - 1} for {total} steps, got {sorted(chosen)}")
    return chosen


class ModelPatchNode:
    """What every MODEL -> MODEL technique node shares: the category, one MODEL output, the `patch` method."""
    CATEGORY = CATEGORY
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "patch"
