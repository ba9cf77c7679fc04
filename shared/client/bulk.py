"""``nlp batch run``: push a document set through the gateway's batch RPCs.

Documents are read lazily (a JSONL file of ``{"id", "text"}`` objects, or a folder of
``.txt`` files), submitted with ``Tasks.SubmitBatch`` in messages of ``chunk`` items, and
their results collected with ``Tasks.StreamBatchResults`` as they finish, one JSON line
per document in the output file. At most ``window`` documents are submitted and not yet
finished, so memory stays flat however large the input is.

Re-running with the same output file resumes: ids already in the output are skipped
(and a partial last line, left by a kill, is cut off first), so after any number of
interruptions the output holds each input id exactly once.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import grpc

from nlp.v1 import common_pb2, tasks_pb2, tasks_pb2_grpc
from shared.contracts import protojson
from shared.contracts.errors import Code


@dataclass(frozen=True)
class Doc:
    """One input document; ``problem`` says why it cannot be submitted (then no text)."""

    id: str
    text: str = ""
    problem: str = ""


def read_jsonl(path: Path) -> Iterator[Doc]:
    """Documents of a JSONL file, one object per line with ``id`` and ``text``."""
    with path.open(encoding="utf-8", errors="replace") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                yield Doc(f"line-{number}", problem=f"line {number}: not JSON: {exc.msg}")
                continue
            if not isinstance(record, dict):
                yield Doc(f"line-{number}", problem=f"line {number}: not a JSON object")
                continue
            doc_id = record.get("id")
            if not isinstance(doc_id, str | int) or isinstance(doc_id, bool) or doc_id == "":
                yield Doc(f"line-{number}", problem=f"line {number}: no string or integer 'id'")
                continue
            text = record.get("text")
            if not isinstance(text, str):
                yield Doc(str(doc_id), problem=f"line {number}: no string 'text'")
                continue
            yield Doc(str(doc_id), text)


def read_folder(path: Path) -> Iterator[Doc]:
    """Every ``*.txt`` file of a folder (sorted); the id is the file name without suffix."""
    for file in sorted(path.glob("*.txt")):
        try:
            yield Doc(file.stem, file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            yield Doc(file.stem, problem=f"{file.name}: cannot read: {exc}")


def read_input(path: Path) -> Iterator[Doc]:
    return unique(read_folder(path) if path.is_dir() else read_jsonl(path))


def unique(docs: Iterator[Doc]) -> Iterator[Doc]:
    """A document whose id came before is a problem, not a second result under that id:
    ids name the results and what a resumed run skips."""
    seen: set[str] = set()
    for doc in docs:
        if doc.id in seen:
            yield Doc(doc.id, problem=f"duplicate id {doc.id!r}: ids must be unique in the input")
            continue
        seen.add(doc.id)
        yield doc


def count_input(path: Path) -> int:
    """Number of documents (a cheap first pass for the progress bar)."""
    if path.is_dir():
        return sum(1 for _ in path.glob("*.txt"))
    with path.open("rb") as lines:
        return sum(1 for line in lines if line.strip())


def scan_output(path: Path) -> set[str]:
    """Ids already in an output file. A last line without its newline (the write was
    cut short) is removed from the file, so that it is redone."""
    if not path.exists():
        return set()
    done: set[str] = set()
    keep = 0
    with path.open("rb") as lines:
        for line in lines:
            if not line.endswith(b"\n"):
                break
            try:
                record = json.loads(line)
                done.add(str(record["id"]))
            except (ValueError, KeyError, TypeError):
                break
            keep += len(line)
    if keep < path.stat().st_size:
        with path.open("r+b") as out:
            out.truncate(keep)
    return done


def _status_name(status: int) -> str:
    return str(common_pb2.TaskStatus.Name(status)).removeprefix("TASK_STATUS_")


def result_line(result: tasks_pb2.TaskResult) -> dict[str, Any]:
    """The output line of a finished document (its id is the result's correlation id)."""
    line: dict[str, Any] = {
        "id": result.correlation_id,
        "task_id": result.task_id,
        "status": _status_name(result.status),
    }
    output = result.WhichOneof("output")
    if output is not None:
        line["result"] = protojson.to_dict(getattr(result, output))
    if result.status != common_pb2.TASK_STATUS_SUCCEEDED:
        line["error"] = protojson.to_dict(result.error)
    line["dead_lettered"] = result.dead_lettered
    return line


def rejected_line(doc_id: str, code: int, message: str) -> dict[str, Any]:
    """The output line of a document that was never submitted (or refused)."""
    return {"id": doc_id, "status": "REJECTED", "error": {"code": code, "message": message}}


@dataclass
class Summary:
    batch_id: str = ""
    total: int = 0
    skipped: int = 0
    succeeded: int = 0
    failed: int = 0
    rejected: int = 0
    dead_lettered: int = 0
    interrupted: bool = False
    # Why the run stopped early (the gateway failed); what finished is in the output.
    error: str = ""
    elapsed_s: float = 0.0
    docs_per_s: float = 0.0
    statuses: dict[str, int] = field(default_factory=dict)

    @property
    def finished(self) -> int:
        return self.succeeded + self.failed + self.rejected

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def text(self) -> str:
        return (
            f"batch {self.batch_id or '-'}: {self.succeeded} done, {self.failed} failed, "
            f"{self.rejected} rejected, {self.dead_lettered} dead-lettered, "
            f"{self.skipped} skipped (already in the output); {self.elapsed_s:.1f} s, "
            f"{self.docs_per_s:.1f} docs/s"
            + (" — interrupted" if self.interrupted else "")
            + (f" — stopped: {self.error}" if self.error else "")
        )


class Progress:
    """A one-line progress bar on stderr: done/total, rate and ETA."""

    def __init__(self, total: int, stream: IO[str], enabled: bool) -> None:
        self.total = total
        self.stream = stream
        self.enabled = enabled
        self.started = time.monotonic()
        self._shown = 0.0

    def update(self, done: int, force: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not force and now - self._shown < 0.25):
            return
        self._shown = now
        elapsed = max(now - self.started, 1e-9)
        rate = done / elapsed
        left = max(self.total - done, 0)
        eta = f"{left / rate:.0f}s" if rate > 0 else "?"
        width = 30
        filled = int(width * done / self.total) if self.total else width
        bar = "#" * filled + "." * (width - filled)
        self.stream.write(f"\r[{bar}] {done}/{self.total} {rate:.1f} docs/s ETA {eta}   ")
        self.stream.flush()

    def close(self, done: int) -> None:
        if self.enabled:
            self.update(done, force=True)
            self.stream.write("\n")
            self.stream.flush()


class BatchRun:
    """One run of ``nlp batch run`` over an open gRPC channel."""

    def __init__(
        self,
        tasks: tasks_pb2_grpc.TasksStub,
        make_task: Callable[[str], tasks_pb2.SubmitRequest],
        output: IO[str],
        *,
        window: int = 1000,
        chunk: int = 100,
        publish_results: bool = False,
        progress: Progress | None = None,
        batch_id: str = "",
    ) -> None:
        self.tasks = tasks
        # Named by the caller: a re-run under the same name resubmits nothing (the
        # gateway acks the tasks its items made), and its results stream holds the
        # earlier runs' results too, which are not this run's to write.
        self.batch_id = batch_id
        self._sent: set[str] = set()
        self.make_task = make_task
        self.output = output
        self.window = threading.Semaphore(window)
        self.chunk = chunk
        self.publish_results = publish_results
        self.progress = progress
        self.summary = Summary()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._batch_known = threading.Event()
        self._calls: list[Any] = []
        self._error: BaseException | None = None

    def _write(self, line: dict[str, Any]) -> None:
        with self._lock:
            self.output.write(json.dumps(line, ensure_ascii=False) + "\n")
            self.output.flush()
            status = line["status"]
            self.summary.statuses[status] = self.summary.statuses.get(status, 0) + 1
            if status == "SUCCEEDED":
                self.summary.succeeded += 1
            elif status == "REJECTED":
                self.summary.rejected += 1
            else:
                self.summary.failed += 1
            if line.get("dead_lettered"):
                self.summary.dead_lettered += 1
            finished = self.summary.finished
        if self.progress is not None:
            self.progress.update(finished)

    def _messages(self, docs: Iterator[Doc]) -> Iterator[tasks_pb2.SubmitBatchRequest]:
        items: list[tasks_pb2.BatchItem] = []
        for doc in docs:
            if self._stop.is_set():
                return
            if doc.problem:
                self._write(rejected_line(doc.id, int(Code.INVALID_ARGUMENT), doc.problem))
                continue
            # Send what is gathered rather than wait for room it would itself free.
            if not self.window.acquire(blocking=False):
                if items:
                    yield self._message(items)
                    items = []
                while not self.window.acquire(timeout=0.5):
                    if self._stop.is_set():
                        return
            if self.batch_id:
                with self._lock:
                    self._sent.add(doc.id)
            items.append(tasks_pb2.BatchItem(item_id=doc.id, task=self.make_task(doc.text)))
            if len(items) >= self.chunk:
                yield self._message(items)
                items = []
        if items:
            yield self._message(items)

    def _message(self, items: list[tasks_pb2.BatchItem]) -> tasks_pb2.SubmitBatchRequest:
        return tasks_pb2.SubmitBatchRequest(
            batch_id=self.batch_id, items=items, publish_results=self.publish_results
        )

    def _collect(self) -> None:
        """Write each result as it finishes (until the batch is complete)."""
        try:
            self._batch_known.wait()
            if self._stop.is_set() or not self.summary.batch_id:
                return
            call = self.tasks.StreamBatchResults(
                tasks_pb2.StreamBatchResultsRequest(batch_id=self.summary.batch_id)
            )
            self._calls.append(call)
            for item in call:
                if self.batch_id:
                    with self._lock:
                        ours = item.result.correlation_id in self._sent
                    if not ours:
                        continue
                self._write(result_line(item.result))
                self.window.release()
        except grpc.RpcError as exc:
            if not self._stop.is_set():
                self._error = exc
        except BaseException as exc:  # surfaced by run() in the main thread
            self._error = exc

    def _halt(self, collector: threading.Thread) -> None:
        self._stop.set()
        self._batch_known.set()
        for call in self._calls:
            call.cancel()
        collector.join(5)

    def run(self, docs: Iterator[Doc]) -> Summary:
        """Submit every document and write every result; returns the counts."""
        started = time.monotonic()
        collector = threading.Thread(target=self._collect, name="batch-results", daemon=True)
        collector.start()
        try:
            responses = self.tasks.SubmitBatch(self._messages(docs))
            self._calls.append(responses)
            for response in responses:
                if not self.summary.batch_id:
                    self.summary.batch_id = response.batch_id
                    print(f"batch {response.batch_id}", file=sys.stderr, flush=True)
                    self._batch_known.set()
                for ack in response.acks:
                    if not ack.task_id:
                        self._write(rejected_line(ack.item_id, ack.error.code, ack.error.message))
                        self.window.release()
            self._batch_known.set()  # also when nothing was sent: the collector ends
            while collector.is_alive():
                collector.join(0.2)
            if self._error is not None:
                raise self._error
        except KeyboardInterrupt:
            self.summary.interrupted = True
            self._halt(collector)
        except grpc.RpcError as exc:
            # The gateway failed: stop, and say what finished (a re-run resumes).
            code = exc.code().name if hasattr(exc, "code") else "UNKNOWN"
            details = exc.details() if hasattr(exc, "details") else str(exc)
            self.summary.error = f"{code}: {details}"
            self._halt(collector)
        finally:
            self.summary.elapsed_s = time.monotonic() - started
            self.summary.docs_per_s = self.summary.finished / max(self.summary.elapsed_s, 1e-9)
            if self.progress is not None:
                self.progress.close(self.summary.finished)
        return self.summary
