"""Pseudonymisation of personal data before anything is written to data/.

Columns that identify a person (email, phone, IP address, name) are replaced by
keyed pseudonyms: "ps_" + the first 32 hex digits of HMAC-SHA256(tenant key, value).
The same value gets the same pseudonym in every batch and every run of a tenant (so
joins and the erasure index keep working), a different one in another tenant, and
nobody without the key can recompute it from a guessed value. Free text keeps its
words but loses the emails, phone numbers and IP addresses inside it ("[email]",
"[phone]", "[ip]").

The key comes from DATA_PLATFORM_PSEUDONYM_KEY. On the embedded default (local
storage) a key is generated once into $DATA_PLATFORM_HOME/pseudonym.key; on s3://
storage it must be given, since a key generated inside one container would silently
change every pseudonym when the container is replaced.

Throughput: a small compiled kernel (data_platform/_native/hmac_kernel.c) computes the
HMACs of a whole Arrow column, split across the cores; free text is searched and
rewritten by RE2 inside Arrow, never row by row in Python: only rows a cheap
pre-filter selects go through the exact patterns. Normalisation: values are stripped; emails and IPs are also
lower-cased. A blank value stays "" (no pseudonym), a null stays null.
"""

import csv
import functools
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from data_platform._native import hmac_kernel, pii_scan_kernel
from data_platform.config import Settings

log = logging.getLogger(__name__)

PII_KINDS = ("email", "phone", "ip", "name", "free_text")
KEY_ENV = "DATA_PLATFORM_PSEUDONYM_KEY"
KEY_FILE = "pseudonym.key"
MIN_KEY_BYTES = 16
PSEUDONYM_PREFIX = "ps_"
PSEUDONYM_HEX = 32  # 128 bits: collisions are negligible even across billions of values
FREE_TEXT_MIN_FRACTION = 0.01  # sampled values with embedded PII that make a column free text
REDACTION_KINDS = ("email", "ip", "phone")  # replacement order: see redact_text
PARALLEL_SLICE = 65_536  # values per kernel call below which one thread does it all
_THREADS = os.cpu_count() or 1
_NO_KEYS = np.zeros(0, dtype=np.int64)

# -- patterns (RE2 syntax: no lookaround, so boundaries are \b or explicit) -------------------

# Non-ASCII written as a code point range: \p{L} makes RE2 compile a huge class on every
# pyarrow call (~20 ms each), this costs ~0.1 ms and also admits internationalised addresses.
_U = r"\x{80}-\x{10FFFF}"
EMAIL_RE = (rf"[A-Za-z0-9._%+{_U}-]+@[A-Za-z0-9{_U}-]+(?:\.[A-Za-z0-9{_U}-]+)*"
            rf"\.[A-Za-z{_U}]{{2,}}")

_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
_V4 = rf"{_OCTET}(?:\.{_OCTET}){{3}}"
_H = r"[0-9A-Fa-f]{1,4}"
# RE2 takes the first alternative that matches at a position, so longer forms come first.
# Every compressed form needs "::", so times ("10:30:45") and MAC addresses never match.
_V6 = "|".join([
    rf"\b(?:{_H}:){{7}}{_H}\b",  # full
    rf"\b(?:{_H}:){{1,4}}:(?:ffff(?::0{{1,4}})?:)?{_V4}\b",  # 64:ff9b::1.2.3.4
    rf"::(?:ffff(?::0{{1,4}})?:)?{_V4}\b",  # ::ffff:1.2.3.4
    rf"\b(?:{_H}:){{1,6}}(?::{_H}){{1,6}}\b",  # 2001:db8::8a2e:370
    rf"::(?:{_H}:){{0,6}}{_H}\b",  # ::1
    rf"\b(?:{_H}:){{1,7}}:",  # 2001:db8::
])
# IPv4 must not follow a word character or a dot ("v1.2.3.4", the tail of "01.23.45.67.89"):
# without lookbehind the preceding character is captured and put back by the replacement.
IP_RE = rf"(?:{_V6})(?:%[0-9A-Za-z]+)?|(^|[^\w.]){_V4}\b"

# Phones need separators or a "+" so that ids, amounts and years never qualify.
PHONE_RE = "|".join([
    # +CC then 7-14 digits, each optionally after one separator, optional "(0)"/(area)
    r"\+[1-9][0-9]{0,2}(?:[ .-]?\(0?[0-9]{0,4}\))?(?:[ .-]?[0-9]){7,14}\b",
    # North American: (555) 123-4567, 555-123-4567, 555.123.4567, 555 123 4567
    r"\(\b[2-9][0-9]{2}\) ?[0-9]{3}[ .-][0-9]{4}\b",
    r"\b[2-9][0-9]{2}(?:-[0-9]{3}-|\.[0-9]{3}\.| [0-9]{3} )[0-9]{4}\b",
    # French-style national: 06 12 34 56 78, 01.23.45.67.89
    r"\b0[1-9](?:[ .-][0-9]{2}){4}\b",
    # other trunk-prefix national forms: 030 1234567, 020 7946 0958, 0171/1234567
    r"\b0[1-9][0-9]{0,3}[ /-][0-9]{3,4}[ -]?[0-9]{3,4}\b",
])

PATTERNS = {"email": EMAIL_RE, "ip": IP_RE, "phone": PHONE_RE}
_REPLACEMENTS = {"email": "[email]", "ip": r"\1[ip]", "phone": "[phone]"}
_FULL = {kind: rf"^(?:{p})$" for kind, p in PATTERNS.items()}
_ANY = "|".join(f"(?:{p})" for p in PATTERNS.values())
# Cheap supersets of the three patterns (every match of a pattern contains its trigger),
# run over all rows; each exact pattern then only sees the few rows holding its trigger.
# Scanned by a compiled kernel (`pii_kinds`), which the tests hold equal to these in RE2.
# Replacements never make a trigger: the placeholders hold no digit, ':', '@' or '+', so
# what a pattern matches after an earlier one replaced was there, with its trigger, before.
_TRIGGERS = {"email": r"@", "ip": r"[0-9A-Fa-f]:[0-9A-Fa-f]|::|[0-9]\.[0-9]",
             "phone": r"[0-9][ ./)-]\(?[0-9]|\+[0-9]"}
_KIND_BITS = {"email": 1, "ip": 2, "phone": 4}  # of the kernel's flags
_PLACEHOLDERS = {"email": "[email]", "ip": "[ip]", "phone": "[phone]"}


# -- key ------------------------------------------------------------------------------------


class PseudonymKeyError(RuntimeError):
    pass


def load_pseudonym_key(settings: Settings, environ=None) -> bytes:
    """The master key: DATA_PLATFORM_PSEUDONYM_KEY (UTF-8 bytes), else on local storage
    the key file in the platform home, generated on first use."""
    env = os.environ if environ is None else environ
    given = env.get(KEY_ENV)
    if given:
        key = given.encode("utf-8")
        if len(key) < MIN_KEY_BYTES:
            raise PseudonymKeyError(f"{KEY_ENV} is too short ({len(key)} bytes); use at least {MIN_KEY_BYTES}, "
                                    "e.g. python -c 'import secrets; print(secrets.token_hex(32))'")
        return key
    if settings.storage_url.startswith("s3://"):
        raise PseudonymKeyError(
            f"{KEY_ENV} is required when storage is s3://: a key generated inside "
            "a container would be lost with it and every pseudonym would change. Generate one with "
            "python -c 'import secrets; print(secrets.token_hex(32))' and keep it in your secret store.")
    return _key_file(Path(settings.home) / KEY_FILE)


def _key_file(path: Path) -> bytes:
    if not path.exists():
        _create_key_file(path)
    # The file's text is used exactly like the variable would be, so an operator can move
    # it into DATA_PLATFORM_PSEUDONYM_KEY later without changing any pseudonym.
    key = path.read_text(encoding="utf-8").strip().encode("utf-8")
    if len(key) < MIN_KEY_BYTES:
        # Never regenerate over an existing file: that would change every pseudonym.
        raise PseudonymKeyError(f"the pseudonym key file {path} holds {len(key)} bytes; at least "
                                f"{MIN_KEY_BYTES} are required (restore it from backup or set {KEY_ENV})")
    return key


def _create_key_file(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    # Written whole under a private name, then linked into place: a concurrent reader sees
    # either no file or a complete one, and of two racing processes exactly one link wins.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        try:
            os.fchmod(fd, 0o600)  # whatever the umask
            os.write(fd, (secrets.token_hex(32) + "\n").encode("ascii"))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.link(tmp, path)
    except FileExistsError:
        return  # another process created it first: use theirs
    except OSError as err:  # e.g. no hard links here; a plain rename could replace a key in use
        raise PseudonymKeyError(f"cannot create {path} ({err}); set {KEY_ENV} instead") from err
    finally:
        tmp.unlink(missing_ok=True)
    log.warning("no %s set: generated a new pseudonymisation key in %s (mode 0600). Back it up: losing it "
                "changes every pseudonym.", KEY_ENV, path)


# -- pseudonyms -----------------------------------------------------------------------------


class Pseudonymizer:
    """Keyed pseudonyms for one tenant. Keeps only the tenant key's two padded HMAC
    blocks, never the master key."""

    def __init__(self, key: bytes, tenant: str):
        if not isinstance(key, bytes | bytearray) or len(key) < MIN_KEY_BYTES:
            raise PseudonymKeyError(f"the pseudonym key must be at least {MIN_KEY_BYTES} bytes")
        self.tenant = tenant
        tenant_key = hmac.new(bytes(key), b"tenant:" + tenant.encode("utf-8"), hashlib.sha256).digest()
        # HMAC(k, m) = H((k^opad) || H((k^ipad) || m)): the compiled kernel starts every
        # value from the SHA-256 states of these two blocks and computes exactly
        # hmac.new(k, m, sha256) for a whole column (~15M short values/s per core here with
        # the CPU's SHA instructions, ~10M/s through OpenSSL, against ~0.9M/s for DuckDB's
        # sha256 and ~0.35M/s for hashlib in a Python loop).
        block = tenant_key.ljust(64, b"\0")
        self._ipad = bytes(b ^ 0x36 for b in block)
        self._opad = bytes(b ^ 0x5C for b in block)
        del tenant_key, block
        self.computed = 0  # HMACs computed, for monitoring

    def __repr__(self) -> str:
        return f"Pseudonymizer(tenant={self.tenant!r})"

    def __reduce__(self):
        raise TypeError("a Pseudonymizer holds key material and is not picklable")

    def pseudonym(self, value: str, kind: str | None = None) -> str:
        """The pseudonym of one value ("" for a blank one)."""
        return self._pseudonymize(pa.array([value], pa.string()), kind)[0][0].as_py()

    def pseudonymize(self, array, kind: str | None = None) -> pa.Array:
        """Pseudonyms of every value, nulls kept, as a string array of the same length."""
        return self._pseudonymize(array, kind)[0]

    def subject_keys(self, array, kind: str | None = None) -> np.ndarray:
        """Sorted distinct subject keys (see `subject_key`) of the values present (no
        nulls, no blanks)."""
        return self._pseudonymize(array, kind, subjects=True)[1]

    def _pseudonymize(self, array, kind: str | None, *, subjects: bool = False) -> tuple[pa.Array, np.ndarray]:
        lower = _lowers(kind)  # check it before any work
        arr = _strings(array, keep_large=True)
        if len(arr) == 0:
            return pa.array([], pa.string()), _NO_KEYS
        normalised = pc.utf8_trim_whitespace(arr)
        if lower:
            # The same result on ASCII text (A-Z only), ~20x faster (0.49 -> 0.025 ms per
            # 22k emails): addresses and IPs are nearly always ASCII.
            normalised = pc.ascii_lower(normalised) if _is_ascii(normalised) else pc.utf8_lower(normalised)
        n = len(normalised)
        # The kernel releases the GIL: big columns are split across the cores.
        step = max(PARALLEL_SLICE, -(-n // _THREADS))
        slices = [normalised.slice(i, step) for i in range(0, n, step)]
        parts = [self._hmac_slice(slices[0])] if len(slices) == 1 else list(_pool().map(self._hmac_slice, slices))
        out = pa.chunked_array([p for p, _ in parts], pa.string()).combine_chunks() if len(parts) > 1 else parts[0][0]
        valid = pc.is_valid(normalised)
        if normalised.null_count:
            out = pc.if_else(valid, out, pa.scalar(None, pa.string()))
        present = pc.and_(valid, pc.not_equal(pc.fill_null(normalised, ""), "")).to_numpy(zero_copy_only=False)
        self.computed += int(present.sum())
        keys = _NO_KEYS
        if subjects:
            keys = sorted_distinct(np.concatenate([k for _, k in parts])[present])
        return out, keys

    def _hmac_slice(self, values: pa.Array) -> tuple[pa.Array, np.ndarray]:
        _, offsets, data = values.buffers()
        if data is None:  # all values empty or null
            data = pa.py_buffer(b"")
        out_offsets, out_data, keys = hmac_kernel.pseudonyms(
            self._ipad, self._opad, PSEUDONYM_PREFIX.encode(), PSEUDONYM_HEX, offsets, data,
            values.offset, len(values), pa.types.is_large_string(values.type))
        out = pa.Array.from_buffers(pa.string(), len(values), [None, pa.py_buffer(out_offsets), pa.py_buffer(out_data)])
        return out, np.frombuffer(keys, dtype=np.int64)

    def redact_text(self, array) -> tuple[pa.Array, dict[str, int]]:
        """Free text with emails, IP addresses and phone numbers replaced by "[email]",
        "[ip]", "[phone]", and how many of each were replaced."""
        arr = _strings(array, keep_large=True)
        counts = dict.fromkeys(REDACTION_KINDS, 0)
        if len(arr) == 0:
            return arr, counts
        kinds = pii_kinds(arr)
        picked = np.flatnonzero(kinds)
        if len(picked) == 0:
            return arr, counts
        # Each pattern sees only the rows holding its trigger (a third of the candidates,
        # or half for phones), in this order: emails first (they contain dots and digits),
        # then IPs (a phone pattern could eat part of one), then phones; each on the output
        # of the one before. A replacement is counted by its placeholder (one RE2 call per
        # pattern instead of a count and a replace: each call compiles its pattern).
        texts, kinds = arr.take(pa.array(picked)), kinds[picked]
        for kind in REDACTION_KINDS:
            rows = np.flatnonzero(kinds & _KIND_BITS[kind])
            if len(rows) == 0:
                continue
            before = texts.take(pa.array(rows))
            after = pc.replace_substring_regex(before, PATTERNS[kind], _REPLACEMENTS[kind])
            placeholder = _PLACEHOLDERS[kind]
            counts[kind] = int(pc.sum(pc.count_substring(after, placeholder)).as_py()
                               - pc.sum(pc.count_substring(before, placeholder)).as_py())
            if counts[kind]:
                replaced = np.zeros(len(texts), dtype=bool)
                replaced[rows] = True
                texts = pc.replace_with_mask(texts, pa.array(replaced), after)
        candidates = np.zeros(len(arr), dtype=bool)
        candidates[picked] = True
        return pc.replace_with_mask(arr, pa.array(candidates), texts), counts


def pii_kinds(array) -> np.ndarray:
    """Per text, the kinds it may hold as bits of `_KIND_BITS` (0: none, null: 0): which of
    `_TRIGGERS` match. The compiled scan reads ~1.4 GB/s, RE2's DFA ~0.55 GB/s, over every
    text of an upload."""
    arr = _strings(array, keep_large=True)
    n = len(arr)
    flags = np.zeros(n, dtype=np.uint8)
    _, offsets, data = arr.buffers()[:3]
    if n and data is not None:
        pii_scan_kernel.candidates(offsets, data, arr.offset, n, pa.types.is_large_string(arr.type), flags)
    if arr.null_count:
        flags[~arr.is_valid().to_numpy(zero_copy_only=False)] = 0
    return flags


@functools.cache
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=_THREADS, thread_name_prefix="pseudonyms")


def sorted_distinct(keys: np.ndarray, *, sorted_runs: bool = False, in_place: bool = False) -> np.ndarray:
    """Sorted distinct keys (np.unique's hash table was ~3x slower on these). With
    `sorted_runs` (a concatenation of a few sorted arrays) a merging sort (timsort) is
    used: it merges two runs in linear time. Timsort's passes grow with the number of
    runs, numpy's vectorised quicksort's do not: from ~8 runs on, the quicksort is
    faster (120 runs of 48k keys: 148 ms merged, 38 ms by quicksort). With `in_place`,
    `keys` is sorted where it is (no full-size copy)."""
    kind = "stable" if sorted_runs else "quicksort"
    if in_place:
        keys.sort(kind=kind)
    else:
        keys = np.sort(keys, kind=kind)
    if len(keys) > 1:
        keys = keys[np.concatenate(([True], keys[1:] != keys[:-1]))]
    return keys


def subject_key(pseudonym: str) -> int:
    """The erasure index's key of a pseudonym: its first 16 hex digits as a signed 64-bit
    integer (what the kernel returns beside each pseudonym). Among a tenant's subjects,
    two keys collide with odds of about n^2 / 2^65; a collision only makes an erasure
    read one more file."""
    if not pseudonym.startswith(PSEUDONYM_PREFIX) or len(pseudonym) < len(PSEUDONYM_PREFIX) + 16:
        raise ValueError(f"not a pseudonym: {pseudonym[:8]!r}...")
    value = int(pseudonym[len(PSEUDONYM_PREFIX):len(PSEUDONYM_PREFIX) + 16], 16)
    return value - (1 << 64) if value >= 1 << 63 else value


def subject_keys_of(array) -> np.ndarray:
    """Sorted distinct subject keys (see `subject_key`) of the pseudonyms in a column of
    them (nulls, blanks and other values left out), computed from the text in numpy, for
    a table that lost rows after `apply_privacy` computed its keys."""
    arr = _strings(array)
    arr = arr.filter(pc.fill_null(pc.starts_with(arr, PSEUDONYM_PREFIX), False))
    arr = arr.filter(pc.greater_equal(pc.utf8_length(arr), len(PSEUDONYM_PREFIX) + 16))
    if len(arr) == 0:
        return _NO_KEYS
    hexes = pc.utf8_slice_codeunits(arr, len(PSEUDONYM_PREFIX), len(PSEUDONYM_PREFIX) + 16)
    _, offsets, data = hexes.buffers()
    starts = np.frombuffer(offsets, dtype=np.int32)[hexes.offset:hexes.offset + len(hexes)]
    chars = np.frombuffer(data, dtype=np.uint8)[starts[:, None] + np.arange(16)]
    nibbles = np.where(chars <= ord("9"), chars - ord("0"), (chars | 0x20) - ord("a") + 10).astype(np.uint64)
    keys = np.bitwise_or.reduce(nibbles << (np.uint64(4) * np.arange(15, -1, -1, dtype=np.uint64)), axis=1)
    return sorted_distinct(keys.view(np.int64))


# Python's `re` forms of the patterns (RE2's \x{..} is written \u/\U here), for raw text
# searched value by value: rejected rows, which are never pseudonymised.
_PY_PATTERNS = {kind: re.compile(p.replace(r"\x{80}-\x{10FFFF}", "\u0080-\U0010ffff"))
                for kind, p in PATTERNS.items()}


def values_in_raw(text: str) -> list[str]:
    """Candidate personal-data values in raw text that was never pseudonymised (a rejected
    row: a JSON document, a CSV line, or anything else): every string of a JSON document,
    every field of a CSV line, and every email, IP address and phone number written in it.
    Their pseudonyms (per kind) tell whether the text holds a known subject; a name written
    inside free text is not a value of its own and is not found this way."""
    out: list[str] = []
    try:
        doc = json.loads(text)
    except ValueError:
        doc = None
    stack = [doc]
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            out.append(value)
        elif isinstance(value, dict):
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
    if not isinstance(doc, dict | list) and "\n" not in text:
        try:
            out += next(csv.reader([text]), [])
        except csv.Error:
            pass
    for kind, pattern in _PY_PATTERNS.items():
        for found in pattern.finditer(text):
            value = found.group(0)
            if kind == "ip" and found.group(1):
                value = value[len(found.group(1)):]  # the character before an IPv4 address
            out.append(value)
    return out


# A name (or any value) inside free text: not glued to a longer word on either side
# (non-ASCII counts as a word character: letters of names), case-insensitive, any run of
# whitespace between its words. RE2 has no lookaround: the boundary characters are
# captured and put back.
_WORD = r"0-9A-Za-z_\x{80}-\x{10FFFF}"
REDACTED = "[redacted]"


def value_pattern(value: str) -> str:
    """The RE2 pattern of `value` inside text (see `redact_value`); groups 1 and 2 are the
    characters around it."""
    words = [re.sub(r"([^0-9A-Za-z\x80-\U0010ffff])", r"\\\1", w) for w in value.split()]
    if not words:
        raise ValueError("empty value")
    body = r"\s+".join(words)
    return rf"(^|[^{_WORD}])(?i:{body})($|[^{_WORD}])"


def value_regex(value: str) -> re.Pattern:
    """`value_pattern` for Python's `re` (text handled value by value, e.g. JSON lines)."""
    words = [re.escape(w) for w in value.split()]
    if not words:
        raise ValueError("empty value")
    body = r"\s+".join(words)
    return re.compile(rf"(?<![0-9A-Za-z_\u0080-\U0010ffff]){body}(?![0-9A-Za-z_\u0080-\U0010ffff])", re.IGNORECASE)


def redact_value(array, value: str, replacement: str = REDACTED) -> tuple[pa.Array, int]:
    """Free text with every occurrence of `value` (see `value_pattern`) replaced, and how
    many were (vectorised: RE2 inside Arrow)."""
    return redact_pattern(array, value_pattern(value), replacement)


def redact_pattern(array, pattern: str, replacement: str = REDACTED) -> tuple[pa.Array, int]:
    """`redact_value` with the pattern made already. Two occurrences one character apart
    share that character, hence a second pass."""
    arr = _strings(array, keep_large=True)
    total = 0
    for _ in range(3):
        found = int(pc.sum(pc.count_substring_regex(arr, pattern)).as_py() or 0)
        if not found:
            break
        total += found
        arr = pc.replace_substring_regex(arr, pattern, rf"\1{replacement}\2")
    return arr, total


def kind_of_value(value: str) -> str | None:
    """"email", "ip" or "phone" when the whole (stripped) value is one, else None (a name,
    perhaps)."""
    value = value.strip()
    for kind in ("email", "ip", "phone"):
        if _PY_PATTERNS[kind].fullmatch(value):
            return kind
    return None


def _lowers(kind: str | None) -> bool:
    if kind is not None and kind not in PII_KINDS:
        raise ValueError(f"unknown PII kind {kind!r}; expected one of {PII_KINDS}")
    # Addresses are case-insensitive (IPv6 hex too): one person, one pseudonym.
    return kind in ("email", "ip")


def _is_ascii(arr: pa.Array) -> bool:
    """Whether every byte of the strings' data (all values, nulls' included) is ASCII
    (False for a layout other than offsets and one data buffer)."""
    if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        return False
    data = arr.buffers()[2]
    return data is None or len(data) == 0 or bool(np.frombuffer(data, np.uint8).max() < 0x80)


def _is_text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def _strings(array, *, keep_large: bool = False) -> pa.Array:
    """A plain (non-chunked) string array of the values."""
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks() if array.num_chunks != 1 else array.chunk(0)
    elif not isinstance(array, pa.Array):
        array = pa.array(array, pa.string())
    t = array.type
    if pa.types.is_dictionary(t):
        array = array.dictionary_decode()
        t = array.type
    if pa.types.is_large_string(t) and keep_large:
        return array
    if not pa.types.is_string(t):
        array = pc.cast(array, pa.string())  # large/view strings, or numbers declared as PII
    return array


# -- detection and application --------------------------------------------------------------


def detect_pii_columns(table: pa.Table, declared: dict[str, str], *, sample: int = 2000,
                       threshold: float = 0.5) -> dict[str, str]:
    """Undeclared string columns that hold personal data: kind per column.

    A column whose sampled values are, for at least `threshold` of them, an email / an
    IP address / a phone number is that kind; otherwise one in which at least 1% of the
    sampled values contain one is "free_text". Names are never guessed: declare them.
    """
    found = {}
    for name in table.column_names:
        if name in declared:
            continue
        column = table[name]
        t = column.type
        if not (_is_text(t) or pa.types.is_dictionary(t) and _is_text(t.value_type)):
            continue
        values = _strings(column.drop_null())
        if len(values) == 0:
            continue
        if len(values) > sample:
            # Evenly spread rather than the head: uploads are often sorted.
            values = values.take(pa.array(np.linspace(0, len(values) - 1, sample).astype(np.int64)))
        trimmed = pc.utf8_trim_whitespace(values)
        n = len(values)
        best, best_share = None, 0.0
        for kind in ("email", "ip", "phone"):
            share = pc.sum(pc.match_substring_regex(trimmed, _FULL[kind])).as_py() / n
            if share >= threshold and share > best_share:
                best, best_share = kind, share
        if best is not None:
            found[name] = best
            continue
        # Any value holding an address counts, whole or embedded: those values would
        # otherwise be written in clear.
        embedded = pc.sum(pc.match_substring_regex(values, _ANY)).as_py() or 0
        if embedded and embedded >= FREE_TEXT_MIN_FRACTION * n:
            found[name] = "free_text"
    return found


def apply_privacy(table: pa.Table, pseudonymizer: Pseudonymizer, pii_columns: dict[str, str], *,
                  subjects: bool = True) -> tuple[pa.Table, dict]:
    """The table with its PII columns pseudonymised or redacted, and a report:
    {"pseudonymised": {column: non-null values}, "redacted": {kind: matches},
     "subjects": sorted distinct subject keys (int64, see `subject_key`) of the
     pseudonyms written; empty with subjects=False}."""
    report = {"pseudonymised": {}, "redacted": dict.fromkeys(REDACTION_KINDS, 0), "subjects": _NO_KEYS}
    subject_parts = []
    for name, kind in pii_columns.items():
        if kind not in PII_KINDS:
            raise ValueError(f"column {name!r}: unknown PII kind {kind!r}; expected one of {PII_KINDS}")
        i = table.schema.get_field_index(name)
        if i < 0:
            continue  # declared but absent from this batch
        field = table.schema.field(i)
        if kind == "free_text":
            text, counts = pseudonymizer.redact_text(table.column(i))
            for k, n in counts.items():
                report["redacted"][k] += n
            table = table.set_column(i, field.with_type(text.type), text)
        else:
            out, present = pseudonymizer._pseudonymize(table.column(i), kind, subjects=subjects)
            report["pseudonymised"][name] = len(out) - out.null_count
            subject_parts.append(present)
            table = table.set_column(i, field.with_type(pa.string()), out)
    if subject_parts:
        report["subjects"] = sorted_distinct(np.concatenate(subject_parts), sorted_runs=True)
    return table, report
