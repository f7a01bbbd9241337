"""`clipforge convert --out s3://...` (any writable fsspec URL): convert into a local staging folder, then
publish the finished dataset to the store.

    out = staging_dir("s3://bucket/ds")      # CLIPFORGE_STAGING (default .clipforge-staging/) / a hash of the URL
    publish(out, "s3://bucket/ds")           # every file to a temporary key, then moved into place; manifest last

The staging folder is a normal `--out` folder, so a killed conversion resumes there as any other does, and a
killed upload resumes too: a file the store already holds with the same size is not sent again. Each file
goes to `.NAME.tmp` first and is moved (a copy and a delete on S3, a rename where the store has one) to its
name: a reader listing the store never takes a half-sent object for a shard. manifest.json goes last, so a
dataset with a manifest at the URL is complete. Credentials come from fsspec's usual places (data_pipeline.remote).
"""
import hashlib
import os

from .options import ConvertError

MANIFEST = "manifest.json"


def staging_dir(url: str) -> str:
    """Where a conversion to `url` is staged: the same folder for the same URL, so re-runs resume."""
    root = os.environ.get("CLIPFORGE_STAGING", ".clipforge-staging")
    return os.path.join(root, hashlib.sha256(url.rstrip("/").encode()).hexdigest()[:16])


def _published(local_dir: str):
    """The files a local --out holds (not its dot-named temporaries), in upload order: shards and their side
    files, then sizes.json, the manifest last."""
    names = sorted(n for n in os.listdir(local_dir)
                   if os.path.isfile(os.path.join(local_dir, n)) and not n.startswith("."))
    if MANIFEST not in names:
        raise ConvertError(f"{local_dir}: no {MANIFEST}; the conversion is not complete, nothing was uploaded")
    rest = [n for n in names if n != MANIFEST]
    return sorted(rest, key=lambda n: n == "sizes.json") + [MANIFEST]


def publish(local_dir: str, url: str) -> int:
    """Upload the complete dataset in local_dir to url (the manifest last); -> files sent."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(url.rstrip("/"))
    sent = 0
    for name in _published(local_dir):
        local, target = os.path.join(local_dir, name), f"{root}/{name}"
        if name != MANIFEST and fs.exists(target) and fs.size(target) == os.path.getsize(local):
            continue  # sent by an earlier, interrupted upload (the manifest is always sent: it is the commit)
        temporary = f"{root}/.{name}.tmp"
        try:
            fs.put_file(local, temporary)
            fs.mv(temporary, target)
        except NotImplementedError:
            raise ConvertError(f"--out {url}: this store cannot be written through fsspec ({type(fs).__name__}); "
                               "give an s3://, gs://, ... URL or a local folder") from None
        except PermissionError as e:
            raise ConvertError(f"--out {url}: writing {name} was refused ({e}); check the store's credentials "
                               "(fsspec's usual environment and config, e.g. AWS_* variables)") from None
        sent += 1
    return sent
