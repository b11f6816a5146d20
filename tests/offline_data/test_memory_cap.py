"""Logs larger than memory: an impressions file is validated and read back through ``datasets`` under a cap.

The cap is ``RLIMIT_DATA`` (Linux >= 4.7 counts the heap and every private writable mapping: what malloc, numpy and
Arrow's system pool allocate; read-only file mappings, such as the memory-mapped Arrow cache of a ``datasets``
view, are not counted, which is the point of that view). It is set in a child process after a warm-up pass over a
one-batch file (imports, thread pools and per-call buffers are the fixed cost of the code; the cap measures what
grows with the file), at :data:`CAP_BYTES` above the warmed-up heap: smaller than the decoded (in-memory Arrow)
size of the file, so a reader that materialised the table would fail, and the child shows that one does.

What must fit: one validation batch (``ValidationConfig.batch_rows``), the event-id key index (hashes, ids,
locations and Bloom bits with their growth and merge copies: about 80 bytes per row at its peak, measured) and
the ``datasets`` conversion's buffers. With 600,000 rows of 184 decoded bytes the file decodes to ~110 MB; the
peak growth measured over four runs was 46-55 MB, under a cap of 80 MB. Settings of the child, each for a reason:

- one Arrow thread (``pa.set_cpu_count(1)``): each worker thread holds a batch in flight; with the default thread
  count the peak varied between 73 and 94 MB from run to run;
- ``MALLOC_ARENA_MAX=1``: glibc would give each Arrow worker thread its own heap, each holding freed memory apart;
- ``MALLOC_MMAP_THRESHOLD_=65536``: fixes glibc's otherwise self-raising threshold, so that the key index's large
  arrays are mapped and unmapped rather than left in the heap after validation (without it the datasets phase
  stacked on ~40 MB of retained heap and a run under load went over the cap);
- ``ARROW_DEFAULT_MEMORY_POOL=system``: Arrow's allocations go to that heap (jemalloc/mimalloc reserve large
  writable regions up front, which the cap would count).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from offline_data.schemas import IMPRESSIONS

ROWS = 600_000
WARM_UP_ROWS = 16_384
BATCH_ROWS = 16_384
CAP_BYTES = 80_000_000

CHILD = """
import json, resource, sys
import pyarrow as pa, pyarrow.compute as pc, pyarrow.parquet as pq
from offline_data.datasets import load_table
from offline_data.io import resolve_source
from offline_data.validation import ValidationConfig, validate_logs

pa.set_cpu_count(1)  # one decoding thread: each Arrow worker holds a batch in flight (see the module docstring)
pa.set_io_thread_count(1)
big, warm, out, cap, batch_rows = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])

def heap_bytes():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmData:"))

def validate_and_scan(path, folder):
    summary = validate_logs({"impressions": resolve_source("impressions", path)}, folder,
                            ValidationConfig(batch_rows=batch_rows))
    view = load_table(folder, "impressions")  # memory-mapped Arrow cache
    rows = clicks = 0
    for batch in view.with_format("arrow").iter(batch_size=batch_rows):
        rows += batch.num_rows
        clicks += pc.sum(batch["clicked"]).as_py()
    table = summary.tables["impressions"]
    return {"read": table.read, "accepted": table.accepted, "rows": rows, "clicks": clicks}

validate_and_scan(warm, out + "/warm")
limit = heap_bytes() + cap
resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
result = validate_and_scan(big, out + "/big")
try:
    pq.read_table(big)  # the whole table decoded in memory: must not fit
    result["read_table"] = "fitted"
except MemoryError:
    result["read_table"] = "MemoryError"
print(json.dumps(result))
"""


def write_impressions(path: Path, rows: int) -> int:
    """A valid impressions file of ``rows`` rows with UUID-length ids; returns its decoded (Arrow) size in bytes."""
    i = np.arange(rows)

    def ids(prefix: str, values: np.ndarray) -> pa.Array:
        return pa.array(np.char.add(prefix, np.char.zfill(values.astype(str), 12)))

    table = pa.table(
        {
            "event_id": ids("event-3f2a9c1e-7b4d-4e8a-", i),
            "request_id": ids("request-8c1d2e3f-5a6b-4c7d-", i // 4),
            "image_id": ids("image-generated-b7e4-41d2-9f0a-", i % 5000),
            "product_id": ids("product-", i % 500),
            "position": pa.array(i % 4 + 1),
            "clicked": pa.array(i % 7 == 0),
            "propensity": pa.array(np.full(rows, 0.25)),
            "shown_at": pa.array(1_700_000_000_000_000 + i * 1000).cast(pa.timestamp("us", tz="UTC")),
            "segment": pa.array(np.array(["warm", "cool", "minimal"])[i % 3]),
        },
        schema=IMPRESSIONS.arrow_schema(),
    )
    pq.write_table(table, path, row_group_size=65_536)
    return table.nbytes


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_DATA and /proc/self/status are Linux's")
def test_impressions_larger_than_the_cap_validate_and_stream_through_datasets(tmp_path: Path) -> None:
    big, warm = tmp_path / "impressions.parquet", tmp_path / "warm" / "impressions.parquet"
    warm.parent.mkdir()
    decoded = write_impressions(big, ROWS)
    write_impressions(warm, WARM_UP_ROWS)
    assert decoded > 1.3 * CAP_BYTES  # the file really is larger than what the child may allocate

    env = {
        **os.environ,
        "ARROW_DEFAULT_MEMORY_POOL": "system",
        "MALLOC_ARENA_MAX": "1",
        "MALLOC_MMAP_THRESHOLD_": "65536",
    }
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join([root, env.get("PYTHONPATH", "")])
    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(big), str(warm), str(tmp_path), str(CAP_BYTES), str(BATCH_ROWS)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    counts = json.loads(result.stdout.strip().splitlines()[-1])
    # Every row was read, accepted and seen again through the datasets view; clicks are rows with i % 7 == 0.
    assert counts["read"] == counts["accepted"] == counts["rows"] == ROWS
    assert counts["clicks"] == (ROWS + 6) // 7
    # The cap binds: materialising the decoded table in the same process fails.
    assert counts["read_table"] == "MemoryError"
