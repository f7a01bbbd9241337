"""How every clipforge writer (convert, curate) stores a tar member: fixed time, mode and owner, so equal
samples give byte-identical shards."""
import io
import tarfile

# 2000-01-01 UTC: a fixed, plausible member timestamp (0 confuses some tar tools).
MEMBER_MTIME = 946684800


def write_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), MEMBER_MTIME, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))
