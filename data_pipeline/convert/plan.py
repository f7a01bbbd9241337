"""The conversion plan: items -> keys -> shards, which node owns which shard, and the plan file that makes
re-runs, other nodes and the merge step agree on it (or refuse with the difference named)."""
import hashlib
import json
import os
from typing import List, Tuple

from clipforge.atomic import write_atomic
from .items import Item, key_width, make_key
from .options import ConvertError, ConvertOptions

PLAN_FILE = "convert_plan.json"


def input_digest(items: List[Item]) -> str:
    """Changes when any source, caption or kept value changes: a resume over other input must not mix shards."""
    digest = hashlib.sha256()
    for item in items:
        # Extra caption sources only when present: plans written before they existed keep their digest.
        fields = [item.source, item.captions, item.extra, item.error]
        fields += [item.caption_sources] if item.caption_sources else []
        digest.update(json.dumps(fields, default=str, ensure_ascii=False).encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def shard_tasks(items: List[Item], options: ConvertOptions) -> List[Tuple[int, List[Tuple[str, Item]]]]:
    """Consecutive runs of samples_per_shard input items (failures included): shard i never depends on timing."""
    width = key_width(len(items))
    keyed = [(make_key(index, width), item) for index, item in enumerate(items)]
    size = options.samples_per_shard
    return [(start // size, keyed[start:start + size]) for start in range(0, len(keyed), size)]


def owned_by(shard_index: int, options: ConvertOptions) -> bool:
    # Round-robin: every node gets an even share of shards, also when the last shard is short.
    return shard_index % options.num_nodes == options.node_rank


# A plan written before these options existed: what its shards were written with (opt-outs were not honoured).
BEFORE_THE_OPTION = {"disallow_optout": True, "respect_robots": False}
# Site opt-outs are read from http(s) responses: they cannot change what a conversion of local files writes.
OPTOUT_KEYS = tuple(BEFORE_THE_OPTION)


def make_plan(items: List[Item], options: ConvertOptions) -> dict:
    num_shards = -(-len(items) // options.samples_per_shard)
    content = options.content()
    if not any(item.source.startswith(("http://", "https://")) for item in items):
        content = {key: value for key, value in content.items() if key not in OPTOUT_KEYS}
    return {"num_items": len(items), "num_shards": num_shards, "input_digest": input_digest(items),
            "options": content}


def in_current_terms(options: dict) -> dict:
    """An older plan's options as today's: the options it predates at their old behaviour, and the one
    --caption-col it held (a string or null) as the list it is now."""
    current = {**BEFORE_THE_OPTION, "neg_caption_col": None, **options}
    column = current.get("caption_col")
    if not isinstance(column, list):
        current["caption_col"] = [] if column is None else [column]
    return current


def write_or_check_plan(out_dir: str, plan: dict) -> None:
    """First run writes the plan; later runs (resume, other nodes) must have the same one."""
    path = os.path.join(out_dir, PLAN_FILE)
    existing = load_plan(out_dir, required=False)
    if existing is None:
        write_atomic(path, json.dumps(plan, indent=1, sort_keys=True, ensure_ascii=False))
        return
    old = in_current_terms(existing["options"])  # opt-out keys: compared only where this plan downloads
    existing = {**existing, "options": {k: v for k, v in old.items() if k in plan["options"] or k not in OPTOUT_KEYS}}
    if existing == plan:
        return
    differences = [key for key in plan["options"] if existing["options"].get(key) != plan["options"][key]]
    what = (f"option(s) {', '.join(differences)} differ" if differences
            else "the input items differ (sources, captions or their number changed)")
    raise ConvertError(f"{out_dir} holds a conversion with another plan: {what}; "
                       "re-run with the same input and options to resume, or use an empty --out")


def load_plan(out_dir: str, required: bool = True):
    path = os.path.join(out_dir, PLAN_FILE)
    if not os.path.isfile(path):
        if required:
            raise ConvertError(f"{path}: no such file; {out_dir} is not a clipforge convert output (run convert first)")
        return None
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)
