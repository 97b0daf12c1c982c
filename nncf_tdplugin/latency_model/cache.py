"""On-disk cache of measured layer latencies, one JSON file per :class:`MeasurementContext`.

Default location: ``$NNCF_TDPLUGIN_CACHE/latency`` or ``~/.cache/nncf_tdplugin/latency``; the config key
``latency.cache_dir`` overrides it. Files are written atomically (temp file + rename), so an interrupted measurement
keeps everything measured before it, and two processes never see a half-written file. Saving merges the entries
on disk that this object has not got (another process sharing the file saved them since it was loaded), under an
exclusive lock on ``<file>.lock`` where the platform has ``fcntl``, so two processes filling one cache keep each
other's measurements.
"""

import json
import os
import pathlib
import tempfile
from contextlib import contextmanager
from typing import Optional, Union

from nncf_tdplugin.latency_model.specs import CACHE_FORMAT as FORMAT_VERSION
from nncf_tdplugin.latency_model.specs import MeasurementContext

try:
    import fcntl
except ImportError:  # not POSIX: saves still merge, without the lock
    fcntl = None


def default_cache_dir() -> pathlib.Path:
    root = os.environ.get("NNCF_TDPLUGIN_CACHE")
    base = pathlib.Path(root) if root else pathlib.Path.home() / ".cache" / "nncf_tdplugin"
    return base / "latency"


class LatencyCache:
    """``key -> {"ms": latency, "spread": p90 - p10}`` for one measurement context."""

    def __init__(self, context: MeasurementContext, directory: Optional[Union[str, pathlib.Path]] = None):
        self.context = context
        self.directory = pathlib.Path(directory) if directory else default_cache_dir()
        self.path = self.directory / f"{context.cache_id}.json"
        self.entries: dict[str, dict] = {}
        self.runtime: dict = {}  # what OpenVINO reported running: precision, threads, call overhead
        if self.path.is_file():
            data = self._read()
            self.entries = data.get("entries", {})
            self.runtime = data.get("runtime", {})

    def _read(self) -> dict:
        data = json.loads(self.path.read_text())
        if data.get("format") != FORMAT_VERSION:
            raise ValueError(f"latency cache {self.path} has format {data.get('format')!r}, expected "
                             f"{FORMAT_VERSION}; delete it to re-measure")
        saved = data.get("context", {})
        for field in ("precision", "cpu", "openvino"):
            if saved.get(field) != getattr(self.context, field):
                raise ValueError(f"latency cache {self.path} was measured with {field}={saved.get(field)!r}, "
                                 f"not {getattr(self.context, field)!r}; it belongs to another context")
        return data

    @contextmanager
    def _locked(self):
        if fcntl is None:
            yield
            return
        with open(self.path.with_name(self.path.name + ".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def __contains__(self, key: str) -> bool:
        return key in self.entries

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, key: str) -> Optional[float]:
        entry = self.entries.get(key)
        return None if entry is None else float(entry["ms"])

    def put(self, key: str, ms: float, spread: float = 0.0) -> None:
        self.entries[key] = {"ms": float(ms), "spread": float(spread)}

    def save(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        with self._locked():
            if self.path.is_file():  # keep what another process saved since this one loaded the file
                disk = self._read()
                self.entries = {**disk.get("entries", {}), **self.entries}
                self.runtime = {**disk.get("runtime", {}), **self.runtime}
            data = {"format": FORMAT_VERSION, "context": self.context.to_json(), "runtime": self.runtime,
                    "entries": self.entries}
            fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".tmp_", suffix=".json")
            with os.fdopen(fd, "w") as f:
                json.dump(data, f, indent=0, sort_keys=True)
            os.replace(tmp, self.path)
