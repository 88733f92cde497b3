"""One dlt run for `npm run bench:peers`: a PostgreSQL table into PostgreSQL with dlt's sql_table.

Prints one JSON line: the load's seconds inside Python and the size of the pipeline state.
"""
import argparse
import json
import time

import dlt
from dlt.sources.sql_database import sql_table

parser = argparse.ArgumentParser()
parser.add_argument("--source", required=True)
parser.add_argument("--destination", required=True)
parser.add_argument("--schema", required=True)
parser.add_argument("--table", required=True)
parser.add_argument("--dataset", required=True)
parser.add_argument("--pipeline", required=True)
parser.add_argument("--pipelines-dir", required=True)
parser.add_argument("--backend", default="sqlalchemy")
parser.add_argument("--format", default=None, help="loader file format; dlt's default when absent")
parser.add_argument("--disposition", default="replace")
parser.add_argument("--incremental", default=None, help="cursor column for dlt.sources.incremental")
parser.add_argument("--primary-key", default=None)
args = parser.parse_args()

started = time.perf_counter()
resource = sql_table(
    credentials=args.source,
    schema=args.schema,
    table=args.table,
    backend=args.backend,
    incremental=dlt.sources.incremental(args.incremental) if args.incremental else None,
    primary_key=args.primary_key,
)
pipeline = dlt.pipeline(
    pipeline_name=args.pipeline,
    pipelines_dir=args.pipelines_dir,
    destination=dlt.destinations.postgres(credentials=args.destination),
    dataset_name=args.dataset,
)
info = pipeline.run(resource, write_disposition=args.disposition, loader_file_format=args.format)
info.raise_on_failed_jobs()
print(json.dumps({
    "seconds": time.perf_counter() - started,
    "state_bytes": len(json.dumps(pipeline.state, default=str)),
    "dlt": dlt.__version__,
}))
