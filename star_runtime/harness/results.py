"""Result files that never lose a finished row and never mix runs.

A result file is jsonl, one row per finished sample, each row written with one ``write`` and fsynced. Beside
it live ``<file>.meta.json`` (the settings and input that made it), ``<file>.lock`` (one writer at a time:
an ``flock`` the OS releases when the writer dies, however it dies) and, only when something had to be set
aside, ``<file>.rejected`` (lines that were torn, foreign or stale: moved there, never deleted).

Every row carries ``fingerprint`` = ``<settings hash>-<sample hash>``: the run settings that change results
and the text of the sample it answers. Resume (``--use_cache``) keeps every row whose settings hash is this
run's (a row for a sample whose text changed since is stale: set aside and run again), refuses in one line a
file made with other settings or from another input (naming what differs), and sets aside torn lines,
duplicates and lines that are not result rows, saying how many.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
from pathlib import Path

from ..errors import ConfigError
from .inputs import sample_digest

FORMAT = "star-runtime-results/1"


def settings_hash(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def check_output_path(output: str | os.PathLike, input_path: str | os.PathLike | None = None) -> Path:
    """Refuse an output that cannot work, before any model or worker starts; returns it as a Path.

    A directory, a path under a file, the input file itself, or a folder that cannot be written each give
    one line naming the problem and the fix. Creates the output's folder if needed.
    """
    p = Path(output).expanduser().resolve()  # one file, one lock, whatever path (symlink, relative) names it
    if p.is_dir():
        raise ConfigError(f"--output_path {output} is a directory; give a file path such as {p / 'preds.jsonl'}")
    if input_path is not None and Path(input_path).exists() and (
            p.resolve() == Path(input_path).resolve() or (p.exists() and os.path.samefile(p, input_path))):
        raise ConfigError(f"--output_path {output} is the input file; predictions would overwrite the samples; "
                          "give another --output_path")
    parent = p.parent
    anc = parent
    while not anc.exists() and anc != anc.parent:
        anc = anc.parent
    if anc.exists() and not anc.is_dir():
        raise ConfigError(f"--output_path {output} lies under {anc}, which is a file, not a folder; "
                          "give a path in a folder")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        probe = open(str(p) + ".lock", "a")
        probe.close()
    except OSError as e:
        raise ConfigError(f"--output_path {output}: cannot write in {parent} ({e.strerror}); "
                          "choose a writable folder") from None
    return p


class ResultFile:
    """The one writer of a result file: lock, resume scan, meta, and the per-row append.

    settings: what changes results (compared on resume); input_path: the samples' file (compared on resume);
    recorded: settings kept in the meta for the record only (device, kernels, batch size...);
    samples: this run's samples (index, text), to tell stale rows; resume: keep finished rows (else start empty).
    After construction ``done`` maps each finished index to its row.
    """

    def __init__(self, path, settings: dict, samples: list[dict], input_path=None, resume: bool = False,
                 recorded: dict | None = None, notice=print):
        self.path = check_output_path(path, input_path)
        self.notice = notice
        self.settings = settings
        self.hash = settings_hash(settings)
        self.digests = {s["index"]: sample_digest(s) for s in samples}
        self.meta_path = Path(str(self.path) + ".meta.json")
        self.rejected_path = Path(str(self.path) + ".rejected")
        self._lock_fd = self._lock()
        self.done: dict = {}
        meta = {"format": FORMAT, "settings": settings,
                "input_path": str(Path(input_path).resolve()) if input_path else None, "recorded": recorded or {}}
        try:
            if resume:
                self._check_meta(meta)
                self._resume()
            flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | (0 if resume else os.O_TRUNC)
            self.fd = os.open(self.path, flags, 0o644)
            self.size = os.fstat(self.fd).st_size
            _atomic_write(self.meta_path, json.dumps(meta, indent=1, sort_keys=True) + "\n")
        except OSError as e:
            self.close()
            raise ConfigError(f"--output_path {path}: {e.strerror}; choose a writable folder with free space") \
                from None
        except BaseException:
            self.close()
            raise

    # -- one writer ------------------------------------------------------------------------------------
    def _lock(self) -> int:
        fd = os.open(str(self.path) + ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            owner = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise ConfigError(f"another run (pid {owner}) is writing {self.path}; wait for it to finish or "
                                  "give another --output_path") from None
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return fd

    # -- resume ------------------------------------------------------------------------------------------
    def _check_meta(self, meta: dict) -> None:
        if not self.meta_path.exists() or not self.path.exists():
            return
        try:
            old = json.loads(self.meta_path.read_text())
        except (OSError, ValueError):
            return  # a damaged meta file: the rows' own fingerprints still decide
        diffs = [f"{k}: {old.get('settings', {}).get(k, '(unset)')!r} -> {meta['settings'].get(k, '(unset)')!r}"
                 for k in sorted(set(old.get("settings", {})) | set(meta["settings"]))
                 if old.get("settings", {}).get(k) != meta["settings"].get(k)]
        if old.get("input_path") and meta["input_path"] and old["input_path"] != meta["input_path"]:
            diffs.append(f"input_path: {old['input_path']} -> {meta['input_path']}")
        if diffs:
            raise ConfigError(f"{self.path} holds results of other settings ({'; '.join(diffs)}); rerun with the "
                              "same settings, start the file over (inference: without --use_cache), or write elsewhere "
                              "(--output_path / --output_dir)")

    def _resume(self) -> None:
        if not self.path.exists():
            return
        kept, rejected, stats = scan(self.path, self.hash, self.digests)
        self.done = {idx: row for idx, row, _ in kept}
        if rejected:
            with open(self.rejected_path, "ab") as f:  # first keep the set-aside lines, then drop them here
                f.writelines(raw if raw.endswith(b"\n") else raw + b"\n" for raw in rejected)
                f.flush()
                os.fsync(f.fileno())
            _atomic_write(self.path, b"".join(raw for _, _, raw in kept))
            why = ", ".join(f"{n} {k}" for k, n in stats.items() if n)
            self.notice(f"[star-runtime] resume: kept {len(kept)} finished rows of {self.path}; moved "
                        f"{len(rejected)} lines ({why}) to {self.rejected_path}")

    # -- append ------------------------------------------------------------------------------------------
    def row_fingerprint(self, index) -> str:
        return f"{self.hash}-{self.digests[index]}"

    def write(self, record: dict) -> None:
        """Append one finished row with its fingerprint; on a write error (full disk, quota) the file is cut
        back to its last whole row and the run ends in one line."""
        record = {**record, "fingerprint": self.row_fingerprint(record["index"])}
        data = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self.fd, view):]
            os.fsync(self.fd)
        except OSError as e:
            try:
                os.ftruncate(self.fd, self.size)
            except OSError:
                pass
            n = len(self.done)
            raise ConfigError(f"cannot write {self.path} ({e.strerror}); the {n} finished rows before this one are "
                              "kept; free space and rerun with --use_cache to resume") from None
        self.size += len(data)
        self.done[record["index"]] = record

    def close(self) -> None:
        for name in ("fd", "_lock_fd"):
            fd = getattr(self, name, None)
            if fd is not None:
                os.close(fd)
                setattr(self, name, None)


def scan(path: Path, run_hash: str, digests: dict) -> tuple[list, list, dict]:
    """Read a result file: (kept [(index, row, raw line)], rejected [raw line], counts by reason).

    A row is kept when it is whole, is a JSON object with an index, carries this run's settings hash and,
    for a sample of this run, that sample's text hash; the first row of an index wins. Rows of samples
    outside this run's selection (e.g. a smaller --num_samples) are kept as they are.
    """
    kept, rejected, seen = [], [], set()
    stats = {"torn": 0, "not result rows": 0, "other settings": 0, "stale (sample text changed)": 0,
             "duplicates": 0}
    with open(path, "rb") as f:
        for raw in f:
            if not raw.strip():
                continue
            reason, row = _judge(raw, run_hash, digests, seen)
            if reason:
                stats[reason] += 1
                rejected.append(raw)
            else:
                seen.add(row["index"])
                kept.append((row["index"], row, raw))
    return kept, rejected, stats


def _judge(raw: bytes, run_hash: str, digests: dict, seen: set):
    if not raw.endswith(b"\n"):
        return "torn", None
    try:
        row = json.loads(raw)
    except ValueError:
        return "torn", None
    if not isinstance(row, dict) or "index" not in row or isinstance(row["index"], (list, dict)):
        return "not result rows", None
    fp = row.get("fingerprint")
    if not isinstance(fp, str) or fp.split("-")[0] != run_hash:
        return "other settings", None
    idx = row["index"]
    if idx in digests and fp != f"{run_hash}-{digests[idx]}":
        return "stale (sample text changed)", None
    if idx in seen:
        return "duplicates", None
    return None, row


def finished_rows(path, settings: dict, samples: list[dict]) -> dict:
    """Read-only resume view {index: row} (for workers that do not write)."""
    p = Path(path)
    if not p.exists():
        return {}
    kept, _, _ = scan(p, settings_hash(settings), {s["index"]: sample_digest(s) for s in samples})
    return {idx: row for idx, row, _ in kept}


def _atomic_write(path: Path, data: str | bytes) -> None:
    """Write a whole file through a temporary file and a rename: readers see the old or the new file."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data.encode("utf-8") if isinstance(data, str) else data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
