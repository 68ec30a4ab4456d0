"""What a new run's clearing of OUTPUT costs now that it deletes only what batchnlp's records name.

    python benchmarks/clear_output.py                 # local disk, 2,000 parts, then moto's S3 server, 500 parts
    python benchmarks/clear_output.py --parts 5000 --where local

An earlier run's OUTPUT is laid out as a crashed attempt leaves it: its job record, N parts, half
of them with their progress record. Then a new run's :meth:`batchnlp.ledger.commit.Committer.prepare`
takes stock (one listing, the records read), refuses nothing, and deletes the N parts, the
records and the job record. Prints its seconds, and checks that only the new job record is left.
S3 is moto's server on 127.0.0.1 reached over HTTP, as in the tests.
Timing lives here, never in a test's assertions.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from batchnlp.io.formats import WorkUnit
from batchnlp.io.storage import Location, write_atomic
from batchnlp.ledger.commit import Committer
from batchnlp.ledger.record import JobRecord, PartResult


def job(run_id: str, units: int, spec: dict[str, str]) -> JobRecord:
    """The job record of a run of ``units`` units: what tells batchnlp's files from others'."""
    return JobRecord(
        run_id=run_id,
        spec_fingerprint="bench",
        input_fingerprint="bench",
        model_versions={},
        rows_per_unit=1,
        units=units,
        batchnlp_version="bench",
        spec=spec,
    )


def lay_out(committer: Committer, parts: int) -> None:
    spec = {"output_format": "parquet", "compression": "zstd"}
    committer.prepare("new", job("crashed", parts, spec))
    for index in range(parts):
        path = committer.path(f"part-{index:05d}.parquet")
        write_atomic(committer.fs, path, b"x")
        if index % 2 == 0:  # the other half: written, then the driver died before recording them
            unit = WorkUnit(index=index, path="file:///in.jsonl", format="jsonl", start=index, stop=index + 1)
            committer.record(
                PartResult(
                    unit=unit,
                    part=committer.fs.unstrip_protocol(path),
                    rows_in=1,
                    rows_out=1,
                    rejected=0,
                    reasons={},
                    rejected_examples=[],
                    tokens=1,
                    padded_tokens=1,
                    bytes=1,
                    sha256="0" * 64,
                    seconds={},
                    device="cpu",
                    precision="fp32",
                    worker="bench",
                    models_loaded_at=0.0,
                )
            )


def measure(url: str, parts: int) -> float:
    committer = Committer(Location(url, {}))
    lay_out(committer, parts)
    committer.fs.invalidate_cache()
    started = time.perf_counter()
    committer.prepare("new", job("new", 1, {}))
    seconds = time.perf_counter() - started
    committer.fs.invalidate_cache()
    left = [path.rsplit("/", 1)[-1] for path in committer.fs.find(committer.output.path)]
    assert left == ["_job.json"], left
    return seconds


def s3_url() -> str:
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
    os.environ["AWS_ENDPOINT_URL"] = f"http://127.0.0.1:{server.get_host_and_port()[1]}"
    boto3.client("s3").create_bucket(Bucket="bench")
    return "s3://bench/out"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--where", choices=["local", "s3", "both"], default="both")
    parser.add_argument("--parts", type=int, help="parts of the earlier run (default: 2,000 local, 500 on S3)")
    args = parser.parse_args()
    for where in ("local", "s3") if args.where == "both" else (args.where,):
        parts = args.parts or (2000 if where == "local" else 500)
        url = tempfile.mkdtemp() + "/out" if where == "local" else s3_url()
        print(f"{where}: a new run's prepare over {parts} parts ({parts // 2} recorded): {measure(url, parts):.2f} s")


if __name__ == "__main__":
    main()
