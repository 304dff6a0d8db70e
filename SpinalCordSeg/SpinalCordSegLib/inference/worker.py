"""A long-lived worker process that keeps a model warm between cases.

The Slicer module must never block its GUI, and the second case should not
pay for loading the model again. :class:`WorkerClient` starts
``python -m SpinalCordSegLib.inference.worker`` once and sends it jobs; the worker keeps
the last :class:`~SpinalCordSegLib.inference.engine.SegmentationEngine` loaded.
Cancelling kills the process; the next job starts a fresh one.

Protocol: one JSON object per line. Requests go to the worker's stdin,
events come back on its stdout (nnU-Net's own prints are sent to stderr):

- request ``{"command": "predict", "job": ID, "scan": PATH, "model": FOLDER,
  "options": {InferenceOptions fields}, "output_dir": DIR,
  "crop_mask": PATH or null, "crop_box": {"xmin": I, ..., "zmax": I} or null,
  "model_id": ID or null}``; ``crop_box`` (the user's ROI, inclusive voxel
  indices of the scan) overrides ``crop_mask`` and the localizer
- request ``{"command": "locate", "job": ID, "scan": PATH, "model": FOLDER,
  "options": {...}, "model_id": ID or null}``: the crop box the model would
  run in, without predicting (for the panel to show as an ROI)
- request ``{"command": "shutdown"}``
- event ``{"event": "ready", "pid": PID}`` once, at start
- event ``{"event": "progress", "job": ID, "fraction": 0..1, "message": TEXT}``
- event ``{"event": "done", "job": ID, "soft_maps": {STRUCTURE: PATH},
  "provenance": {...}, "warnings": [...], "seconds": S, "model_loaded": BOOL,
  "crop_box": {"source": ..., "xmin": I, ..., "zmax": I} or null}``; a ``locate``
  job's ``done`` has ``crop_box``, ``crop`` (the sidecar record) and ``warnings``
- event ``{"event": "error", "job": ID, "message": TEXT, "detail": TRACEBACK}``

Soft maps are float32 NIfTI files named ``<source>_label-<LABEL>_probseg.nii.gz``
in ``output_dir``.

Example:
    >>> from SpinalCordSegLib.inference.worker import WorkerClient
    >>> client = WorkerClient()  # doctest: +SKIP
    >>> job = client.submit("t2.nii.gz", "models/demo-sc", {"device": "cpu"}, "out/")  # doctest: +SKIP
    >>> client.wait(job)["soft_maps"]  # doctest: +SKIP
    {'sc': 'out/t2_label-SC_probseg.nii.gz'}
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
import traceback
import uuid
from pathlib import Path
from typing import IO, Dict, List, Optional, Union

from ..errors import CancelledError, SpinalCordSegError


# ---------------------------------------------------------------- worker side

class _Worker:
    """The process side: reads requests, keeps one engine warm, emits events."""

    def __init__(self, events: IO[str]) -> None:
        self._events = events
        self._engine = None
        self._engine_key: Optional[str] = None

    def emit(self, **event: object) -> None:
        self._events.write(json.dumps(event) + "\n")
        self._events.flush()

    def serve(self, requests: IO[str]) -> None:
        self.emit(event="ready", pid=os.getpid())
        for line in requests:
            if not line.strip():
                continue
            try:
                request = json.loads(line)
            except ValueError:
                self.emit(event="error", job=None, message=f"invalid request line: {line[:200]!r}", detail="")
                continue
            if request.get("command") == "shutdown":
                return
            if request.get("command") == "predict":
                self.predict(request)
            elif request.get("command") == "locate":
                self.locate(request)
            else:
                self.emit(event="error", job=request.get("job"), message=f"unknown command {request.get('command')!r}",
                          detail="")

    def _engine_for(self, model: str, options: dict, model_id: Optional[str]):
        from .engine import InferenceOptions, SegmentationEngine

        key = json.dumps([model, options, model_id], sort_keys=True)
        loaded = key != self._engine_key
        if loaded:
            self._engine = None  # free the previous model before loading the next
            self._engine = SegmentationEngine(model, InferenceOptions(**options), model_id=model_id)
            self._engine_key = key
        return self._engine, loaded

    def locate(self, request: dict) -> None:
        from ..imaging.image_io import read_scan

        job = request.get("job")
        start = time.perf_counter()
        try:
            self.emit(event="progress", job=job, fraction=0.0, message="loading the model")
            engine, loaded = self._engine_for(request["model"], request.get("options") or {}, request.get("model_id"))
            self.emit(event="progress", job=job, fraction=0.1, message="locating the cord")
            box, record, warnings = engine.crop_box_for(read_scan(request["scan"]), request["scan"])
            self.emit(event="done", job=job, crop_box=box.to_dict() if box else None, crop=record, warnings=warnings,
                      seconds=time.perf_counter() - start, model_loaded=loaded)
        except Exception as error:  # report every failure to the client; the worker stays up
            self.emit(event="error", job=job, message=str(error) or type(error).__name__,
                      detail=traceback.format_exc())

    def predict(self, request: dict) -> None:
        from .cropping import CropBox
        from .engine import load_crop_mask
        from ..imaging.image_io import read_scan, write_image_atomic
        from ..imaging.naming import output_name, source_name

        job = request.get("job")
        start = time.perf_counter()
        try:
            self.emit(event="progress", job=job, fraction=0.0, message="loading the model")
            engine, loaded = self._engine_for(request["model"], request.get("options") or {}, request.get("model_id"))
            scan = read_scan(request["scan"])
            crop = load_crop_mask(request["crop_mask"]) if request.get("crop_mask") else None
            box = CropBox.from_dict(request["crop_box"]) if request.get("crop_box") else None
            prediction = engine.predict(
                scan, crop_mask=crop, crop_box=box, name=request["scan"],
                progress=lambda fraction, message: self.emit(
                    event="progress", job=job, fraction=fraction, message=message),
            )
            source = source_name(request["scan"])
            output_dir = Path(request["output_dir"])
            paths = {
                structure: str(write_image_atomic(soft, output_dir / output_name(source, structure, "probseg")))
                for structure, soft in prediction.soft_maps.items()
            }
            self.emit(event="done", job=job, soft_maps=paths, provenance=prediction.provenance,
                      warnings=prediction.warnings, seconds=time.perf_counter() - start, model_loaded=loaded,
                      crop_box=prediction.crop_box.to_dict() if prediction.crop_box else None)
        except Exception as error:  # report every failure to the client; the worker stays up
            self.emit(event="error", job=job, message=str(error) or type(error).__name__,
                      detail=traceback.format_exc())


def main() -> int:
    """Entry point of ``python -m SpinalCordSegLib.inference.worker``."""
    # The protocol owns the real stdout; anything printed (nnU-Net prints) goes to stderr.
    events = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    print(f"SpinalCordSeg worker {os.getpid()} started ({sys.executable})", file=sys.stderr, flush=True)
    _Worker(events).serve(sys.stdin)
    return 0


# ---------------------------------------------------------------- client side

#: Windows' CREATE_NO_WINDOW (``subprocess.CREATE_NO_WINDOW`` exists only on Windows).
CREATE_NO_WINDOW = 0x08000000
#: How much of the worker's log an error shows.
LOG_TAIL_CHARS = 4000


def console_options(platform: str = sys.platform) -> dict:
    """``Popen`` options that start the worker without a console window (Windows), as Slicer's
    ``launchConsoleProcess`` hides its window; none elsewhere.

    >>> console_options("win32")
    {'creationflags': 134217728}
    >>> console_options("linux")
    {}
    """
    return {"creationflags": CREATE_NO_WINDOW} if platform == "win32" else {}


class WorkerClient:
    """Starts and talks to the worker process.

    Args:
        python_executable: the Python that runs the worker; in Slicer, the
            ``PythonSlicer`` executable. Defaults to ``sys.executable``.
        env: extra environment variables for the worker.
        log_path: where the worker's stderr (nnU-Net's prints, warnings, a
            crash's traceback) goes, from each start of the worker (an
            earlier run's log was shown with its error); None: this
            process's stderr. The
            panel passes a file, since nobody reads a GUI's stderr, and shows
            its end when the worker fails (:meth:`log_tail`).
    """

    def __init__(self, python_executable: Optional[str] = None, env: Optional[Dict[str, str]] = None,
                 log_path: Optional[Union[str, Path]] = None) -> None:
        self.python_executable = python_executable or sys.executable
        self.env = dict(os.environ, **(env or {}))
        self.log_path = Path(log_path) if log_path is not None else None
        self._process: Optional[subprocess.Popen] = None
        self._events: "queue.Queue[dict]" = queue.Queue()
        self._pending: List[str] = []

    @property
    def pid(self) -> Optional[int]:
        """Process id of the running worker, or None."""
        return self._process.pid if self.running else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def _start(self) -> None:
        log = None
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            log = open(self.log_path, "wb")  # the child keeps its own handle; ours closes below
        try:
            self._process = subprocess.Popen(
                [self.python_executable, "-m", "SpinalCordSegLib.inference.worker"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, env=self.env,
                text=True, encoding="utf-8", bufsize=1, **console_options(),
            )
        finally:
            if log is not None:
                log.close()
        threading.Thread(target=self._read_events, args=(self._process,), daemon=True).start()

    def _read_events(self, process: subprocess.Popen) -> None:
        for line in process.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                continue  # not a protocol line
            if event.get("event") in ("done", "error") and event.get("job") in self._pending:
                self._pending.remove(event["job"])
            self._events.put(event)
        code = process.wait()
        if process is self._process:
            for job in list(self._pending):
                self._pending.remove(job)
                self._events.put({"event": "error", "job": job, "detail": "",
                                  "message": f"the worker process exited (code {code}) before finishing"})

    def submit(
        self,
        scan: Union[str, Path],
        model: Union[str, Path],
        options: Optional[dict] = None,
        output_dir: Union[str, Path] = ".",
        crop_mask: Optional[Union[str, Path]] = None,
        model_id: Optional[str] = None,
        crop_box: Optional[dict] = None,
    ) -> str:
        """Queue a prediction; return its job id. Starts the worker if needed.

        ``crop_box``: the user's box (``CropBox.to_dict()``), predicted in as it is.
        """
        return self._send({
            "command": "predict", "scan": str(scan), "model": str(model),
            "options": options or {}, "output_dir": str(output_dir),
            "crop_mask": str(crop_mask) if crop_mask else None, "model_id": model_id, "crop_box": crop_box,
        })

    def submit_locate(self, scan: Union[str, Path], model: Union[str, Path], options: Optional[dict] = None,
                      model_id: Optional[str] = None) -> str:
        """Queue a ``locate`` job (the crop box the model would use); return its job id."""
        return self._send({"command": "locate", "scan": str(scan), "model": str(model), "options": options or {},
                           "model_id": model_id})

    def _send(self, request: dict) -> str:
        if not self.running:
            self._start()
        job = uuid.uuid4().hex
        request["job"] = job
        self._pending.append(job)
        self._process.stdin.write(json.dumps(request) + "\n")
        self._process.stdin.flush()
        return job

    def log_tail(self, chars: int = LOG_TAIL_CHARS) -> str:
        """The end of the worker's log file ('' without one)."""
        if self.log_path is None or not self.log_path.is_file():
            return ""
        with open(self.log_path, "rb") as stream:
            stream.seek(max(0, self.log_path.stat().st_size - chars))
            return stream.read().decode("utf-8", errors="replace")

    def poll(self) -> List[dict]:
        """Events received since the last call (never blocks)."""
        events = []
        while True:
            try:
                events.append(self._events.get_nowait())
            except queue.Empty:
                return events

    def wait(self, job: str, timeout: Optional[float] = None, on_event=None) -> dict:
        """Block until ``job`` ends; return its ``done`` event or raise its error."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                event = self._events.get(timeout=remaining)
            except queue.Empty:
                raise SpinalCordSegError(f"worker job {job} did not finish within {timeout} s") from None
            if on_event is not None:
                on_event(event)
            if event.get("job") == job and event.get("event") == "done":
                return event
            if event.get("job") == job and event.get("event") == "error":
                if event.get("cancelled"):
                    raise CancelledError(event["message"])
                raise SpinalCordSegError(event["message"])

    def cancel(self) -> None:
        """Kill the worker (ending every pending job); the next submit restarts it."""
        process, self._process = self._process, None
        if process is not None:
            process.kill()
            process.wait()
        for job in self._pending:
            self._events.put({"event": "error", "job": job, "message": "cancelled by the user",
                              "detail": "", "cancelled": True})
        self._pending.clear()

    def close(self, timeout: float = 10.0) -> None:
        """Ask the worker to exit; kill it if it does not."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        try:
            process.stdin.write(json.dumps({"command": "shutdown"}) + "\n")
            process.stdin.flush()
            process.wait(timeout=timeout)
        except (OSError, subprocess.TimeoutExpired):
            process.kill()
            process.wait()

    def __enter__(self) -> "WorkerClient":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


if __name__ == "__main__":
    sys.exit(main())
