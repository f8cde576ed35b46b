"""Compiled kernels for the hot loops that Arrow and DuckDB do not cover (metadata is in
pyproject.toml). Each is a small CPython extension over Arrow buffers that releases the
GIL, so the callers can split a column across threads."""

from setuptools import Extension, setup

COMMON = ["-O3", "-std=c11", "-Wall", "-Wno-deprecated-declarations"]
STRINGS = ["data_platform/_native/arrow_strings.h"]  # included by the string kernels

setup(ext_modules=[
    # JSON Lines blocks of flat rows (strings, integers, doubles, booleans) parsed in one
    # pass into Arrow buffers, for data_platform/readers.py (Arrow's reader otherwise).
    Extension("data_platform._native.jsonl_kernel", ["data_platform/_native/jsonl_kernel.c"],
              extra_compile_args=COMMON),
    # HMAC-SHA-256 with precomputed inner/outer midstates; OpenSSL's SHA-256 uses the
    # CPU's SHA extensions where present.
    Extension("data_platform._native.hmac_kernel", ["data_platform/_native/hmac_kernel.c"],
              libraries=["crypto"], extra_compile_args=COMMON, depends=STRINGS),
    # The scan of free text for values that may hold an email, phone or IP (the cheap
    # superset the exact patterns then check), for data_platform/privacy.py.
    Extension("data_platform._native.pii_scan_kernel", ["data_platform/_native/pii_scan_kernel.c"],
              extra_compile_args=COMMON, depends=STRINGS),
    # MinHash LSH signatures for near-duplicate texts (data_platform/neardup.py); the
    # inner min loop is compiled twice (AVX2 and baseline) and picked at load time.
    Extension("data_platform._native.minhash_kernel", ["data_platform/_native/minhash_kernel.c"],
              extra_compile_args=COMMON, depends=STRINGS),
    # The near-duplicate index's lookup structures and per-row decisions
    # (data_platform/neardup.py): bucketed hash tables per LSH band over a ring of rows.
    Extension("data_platform._native.neardup_index", ["data_platform/_native/neardup_index.c"],
              extra_compile_args=COMMON, libraries=["m"]),
    # DuckDB's hash() of string values, bit for bit, for the row-hash index
    # (data_platform/dedup.py): rows hashed without loading DuckDB into the ingestion.
    Extension("data_platform._native.rowhash_kernel", ["data_platform/_native/rowhash_kernel.c"],
              extra_compile_args=COMMON, depends=STRINGS),
    # Rows of a string column copied into exactly sized buffers (data_platform/selection.py):
    # Arrow's filter grows its output, faulting in fresh pages at every growth.
    Extension("data_platform._native.select_kernel", ["data_platform/_native/select_kernel.c"],
              extra_compile_args=COMMON, depends=STRINGS),
    # ISO dates and timestamps of the shapes Arrow's safe cast surely accepts, calendar
    # included (data_platform/validation.py): one pass instead of RE2 and numpy.
    Extension("data_platform._native.shape_kernel", ["data_platform/_native/shape_kernel.c"],
              extra_compile_args=COMMON, depends=STRINGS),
])
