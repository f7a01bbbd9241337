"""Human-readable outputs: the stdout table (each number beside its chance level), the CLIP_benchmark
JSON, and an optional markdown / HTML report with example retrievals as thumbnails.

Examples: the first N captions (-> their top-k images) and the first N images (-> their top-k captions),
or for classification the first N images with their top-k classes; a hit is marked. Candidates are ordered
like the metrics (score, then lower index). Under several ranks every rank calls `examples` (each ranks
its own captions for the image queries); rank 0 writes.
"""
import base64
import html
import io
import json
import math
import os
from typing import Dict, List

import torch
from PIL import Image

from clipforge.atomic import write_atomic
from clipforge.data_pipeline import remote
from clipforge.data_pipeline.shards import ShardSet, decode_sample, index_tar
from clipforge.eval.ranking import tile_scores


def _fmt(x) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.2f}"


# CLIP_benchmark's names say what is retrieved: "image retrieval" = text->image queries, "text retrieval" = image->text.
DIRECTIONS = {"image_retrieval": "text->image", "text_retrieval": "image->text", "mean_recall": "both directions"}


def labelled(key: str) -> str:
    """'image_retrieval_recall@5 (text->image)': CLIP_benchmark's metric name with the direction it measures."""
    direction = next((d for prefix, d in DIRECTIONS.items() if key.startswith(prefix)), None)
    return f"{key} ({direction})" if direction else key


def rates(metrics: Dict) -> Dict:
    """The metrics that are fractions (shown as %): a linear probe's settings and its CLIP_benchmark-named
    copies (lp_*) are left out of the tables."""
    return {k: v for k, v in metrics.items() if not k.startswith("lp_") and k not in PROBE_SETTINGS}


PROBE_SETTINGS = ("weight_decay", "epochs", "seed", "fewshot_k", "normalized")


def table(run, title: str) -> str:
    """Plain-text table: metric (with its direction), value (%), chance (%); a linear probe's chosen
    weight decay below it."""
    shown = rates(run.metrics)
    width = max(len(labelled(k)) for k in shown)
    lines = [title, f"{'metric'.ljust(width)}  {'value %':>8}  {'chance %':>8}"]
    for key, value in shown.items():
        lines.append(f"{labelled(key).ljust(width)}  {_fmt(value):>8}  {_fmt(run.chance.get(key)):>8}")
    if "weight_decay" in run.metrics:
        lines.append(f"(weight decay chosen on val: {run.metrics['weight_decay']:.4g})")
    counts = ", ".join(f"{v:,} {k}" for k, v in run.counts.items())
    skipped = ", ".join(f"{n} {reason} (e.g. {run.skipped_examples[reason]})" for reason, n in run.skipped.items())
    lines.append(f"({counts}; skipped: {skipped or 'none'})")
    return "\n".join(lines)


def _json_number(x):
    return None if isinstance(x, float) and math.isnan(x) else x


def result_json(run, dataset: str, model: str, pretrained: str, extra: Dict) -> Dict:
    """CLIP_benchmark's result layout; NaN (acc5 with < 5 classes) is written as null (valid JSON)."""
    return {"dataset": dataset, "model": model, "pretrained": pretrained, "task": run.task,
            "metrics": {k: _json_number(v) for k, v in run.metrics.items()}, "language": "en",
            "clipforge": {"chance": {k: _json_number(v) for k, v in run.chance.items()}, "counts": run.counts,
                          "skipped": run.skipped, **extra}}


def write_json(path: str, obj: Dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_atomic(path, json.dumps(obj, indent=2) + "\n")


def _ordered(scores: torch.Tensor, k: int) -> List[int]:
    return torch.sort(scores, descending=True, stable=True).indices[:k].tolist()


def examples(run, comm, num: int, k: int) -> Dict:
    """Example queries with their top-k (global indices), the same on every rank."""
    keys = [key for part in comm.gather_objects(run.local.keys) for key in part]
    if run.task == "zeroshot_classification":
        W, labels = run.extra["classifier"], run.extra["labels"]
        out = []
        for j in range(min(num, len(run.local.keys))):
            logits = 100.0 * run.local.image_emb[j:j + 1].float() @ W.float().T
            out.append({"image": run.local.keys[j], "label": int(labels[j]), "top": _ordered(logits[0], k)})
        return {"keys": keys, "classify": [e for part in comm.gather_objects(out) for e in part][:num]}
    images, local = run.extra["all_images"].float().cpu(), run.local
    flat = [c for caps in local.captions for c in caps]  # local text t is flat[t]
    tile = (max(64, num), 4096)
    text_q = []
    for j in range(min(num, len(local.text_emb))):
        row = torch.cat([tile_scores(local.text_emb[j:j + 1], images[c:c + 4096], tile)[0]
                         for c in range(0, len(images), 4096)])
        owner = int(local.text_to_image[j]) + run.image_offset
        text_q.append({"caption": flat[j], "image": owner, "top": _ordered(row, k)})
    queries = images[:num]
    cand = []  # this rank's best captions for each image query: (score, global text index, text, owner)
    if len(local.text_emb):
        s = torch.cat([tile_scores(local.text_emb[a:a + 1024], queries, (1024, max(64, num)))
                       for a in range(0, len(local.text_emb), 1024)])  # [texts, queries]
        for q in range(len(queries)):
            top = _ordered(s[:, q], k)
            cand.append([(float(s[t, q]), run.text_offset + t, flat[t],
                          int(local.text_to_image[t]) + run.image_offset) for t in top])
    merged = []
    parts = comm.gather_objects(cand)
    for q in range(len(queries)):
        pool = [c for part in parts if q < len(part) for c in part[q]]
        merged.append({"image": q, "top": sorted(pool, key=lambda c: (-c[0], c[1]))[:k]})
    text_q = [e for part in comm.gather_objects(text_q) for e in part][:num]  # rank 0 may hold no caption
    return {"keys": keys, "text_queries": text_q, "image_queries": merged}


def thumbnails(data: ShardSet, keys: List[str], size: int = 96) -> Dict[str, bytes]:
    """JPEG thumbnails of the samples with these keys (scans tar headers; reads only those images)."""
    wanted, out = set(keys), {}
    for shard in getattr(data, "shards", []):  # an ImageFolder has no shards: the report names its files
        entries = [e for e in index_tar(shard.path).samples if e.key in wanted]
        with remote.open_sequential(shard.path) as f:
            for entry in entries:
                sample = decode_sample(f, entry)
                try:
                    with Image.open(io.BytesIO(sample["image_bytes"] or b"")) as im:
                        im = im.convert("RGB")
                        im.thumbnail((size, size))
                        buf = io.BytesIO()
                        im.save(buf, "JPEG", quality=85)
                        out[entry.key] = buf.getvalue()
                except Exception:  # noqa: BLE001 -- a thumbnail that cannot be made is left blank
                    continue
    return out


def _img(thumbs: Dict[str, bytes], key: str, ok: bool, as_html: bool, assets: str) -> str:
    border = "3px solid #2a2" if ok else "3px solid #ccc"
    if key not in thumbs:
        return html.escape(key)
    if as_html:
        b64 = base64.b64encode(thumbs[key]).decode()
        return f'<img src="data:image/jpeg;base64,{b64}" title="{html.escape(key)}" style="border:{border}">'
    os.makedirs(assets, exist_ok=True)
    with open(os.path.join(assets, f"{key}.jpg"), "wb") as f:
        f.write(thumbs[key])
    mark = " ✔" if ok else ""
    return f"![{key}]({os.path.basename(assets)}/{key}.jpg){mark}"


def write_report(path: str, run, ex: Dict, data: ShardSet, title: str) -> None:
    """Markdown (.md) or HTML (.html) with the metrics table and the example retrievals as thumbnails."""
    as_html = path.endswith((".html", ".htm"))
    assets = os.path.splitext(path)[0] + "_assets"
    keys = ex["keys"]
    need = set()
    for q in ex.get("text_queries", []):
        need.update(keys[i] for i in q["top"])
    for q in ex.get("image_queries", []):
        need.add(keys[q["image"]])
    for q in ex.get("classify", []):
        need.add(q["image"])
    thumbs = thumbnails(data, sorted(need))
    esc = html.escape if as_html else (lambda x: x)
    rows = [f"| {k} | {_fmt(v)} | {_fmt(run.chance.get(k))} |" for k, v in run.metrics.items()]
    parts = [f"# {esc(title)}", "", "| metric | value % | chance % |", "|---|---|---|", *rows, ""]
    if "text_queries" in ex:
        parts += ["## caption -> images (own image outlined / ticked)", ""]
        for q in ex["text_queries"]:
            cells = " ".join(_img(thumbs, keys[i], i == q["image"], as_html, assets) for i in q["top"])
            parts += [f"**{esc(q['caption'])}**", "", cells, ""]
        parts += ["## image -> captions (own captions in bold)", ""]
        for q in ex["image_queries"]:
            caps = [f"**{esc(c[2])}**" if c[3] == q["image"] else esc(c[2]) for c in q["top"]]
            parts += [_img(thumbs, keys[q["image"]], False, as_html, assets), "",
                      *[f"{n + 1}. {c}" for n, c in enumerate(caps)], ""]
    else:
        names = run.extra["classnames"]
        parts += ["## images -> top classes (true class in bold)", ""]
        for q in ex["classify"]:
            top = [f"**{esc(names[c])}**" if c == q["label"] else esc(names[c]) for c in q["top"]]
            parts += [_img(thumbs, q["image"], False, as_html, assets), "", ", ".join(top), ""]
    text = "\n".join(parts)
    with open(path, "w", encoding="utf-8") as f:
        f.write(_to_html(text) if as_html else text)


def _to_html(text: str) -> str:
    """The few markdown constructs write_report uses -> HTML (headings, one table, lists, bold)."""
    import re
    out = ["<!doctype html><meta charset='utf-8'><body style='font-family:sans-serif'>"]
    for line in text.split("\n"):
        line = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", line)
        if line.startswith("## "):
            out.append(f"<h2>{line[3:]}</h2>")
        elif line.startswith("# "):
            out.append(f"<h1>{line[2:]}</h1>")
        elif line.startswith("|---"):
            continue
        elif line.startswith("|"):
            cells = "".join(f"<td>{c.strip()}</td>" for c in line.strip("|").split("|"))
            out.append(f"<tr>{cells}</tr>")
        elif re.match(r"^\d+\. ", line):
            out.append(f"<div>{line}</div>")
        elif line:
            out.append(f"<p>{line}</p>")
    body = "\n".join(out)
    body = re.sub(r"(<tr>.*?</tr>\n?)+", lambda m: f"<table border=1 cellpadding=4>{m.group(0)}</table>", body, flags=re.S)
    return body + "</body>"
