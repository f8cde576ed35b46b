"""data_platform: the life of machine-learning training data on S3-compatible storage,
as Dagster assets (see the README)."""

import os

# Arrow's jemalloc reads its options once, when libarrow is loaded, so they are set here,
# before anything of the platform imports pyarrow (a value already in the environment
# wins). One arena for every thread instead of four per CPU, each thread bound to one in
# turn: an ingestion allocates a table in one thread and frees it in another, and an
# arena's freed pages are reused by its own threads only. With one, what the writer
# frees the parser reuses: peak RSS of a 1 GB upload 518-526 -> 490-509 MB, no slower.
# Arrow's own options (freed pages kept for 1 s, then given back) still apply.
os.environ.setdefault("JE_ARROW_MALLOC_CONF", "narenas:1")
