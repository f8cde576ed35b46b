"""Quality score of an upload's kept rows, computed table by table as they stream by.

The score (0..1) says how much of an upload is training data usable as it is. It is a
weighted mean of four dimensions:

- completeness (0.3): share of the kept rows' cells that are neither null nor blank;
- text quality (0.3): share of the sampled texts that pass every text check (see
  `text_checks`); left out, and the other weights scaled up, when there is no text column;
- validity (0.2): share of the upload's rows that met its contract;
- uniqueness (0.2): share of the upload's rows that were neither duplicates nor near
  duplicates.

The two dimensions of the kept rows weigh more than the two that measure what
refinement removed: removed rows are never trained on, but many of them still say the
source is careless. An upload that keeps no row scores 0: it has nothing to train on.

Cost is bounded whatever the upload size. Per table, only column metadata (null
counts, sizes), a first-byte check for blank strings and the upkeep of a uniform
random sample of each text column (a bottom-k reservoir of at most SAMPLE_SIZE texts
over the whole upload). Text checks and language detection run once, in `finish`, on
that sample: one regular expression over every text would cost ~40 ms per 32k-row
table (~8 MB of text), while 1,000 sampled texts put a share within ±3 points.

Languages come from py3langid, whose naive-Bayes model ships inside the wheel (no
download at run time). Its per-text classify walks the bytes in a Python loop
(~0.25 ms a text); `LanguageDetector` runs the same model on a whole sample at once
with numpy (~4x faster) and a test checks that it agrees with py3langid's classify.
"""

import functools
import re
import tempfile
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from threadpoolctl import threadpool_limits

SAMPLE_SIZE = 1_000  # texts per text column per upload, for text checks and languages
ROLE_SAMPLE_ROWS = 2_000  # rows of the first table looked at to tell column roles
TEXT_MIN_MEAN_CHARS = 32
TEXT_DOMINANT_SHARE = 0.75  # of the data's bytes held by text columns, for "text"
MEDIA_SHARE = 0.5  # of a column's values that must be media paths/URIs

WEIGHTS = {"completeness": 0.3, "text_quality": 0.3, "validity": 0.2, "uniqueness": 0.2}

# -- text checks -------------------------------------------------------------------------

TEXT_MIN_CHARS = 16  # shorter: a word or two, little to learn from
TEXT_MAX_CHARS = 100_000  # longer: a dump or a concatenation gone wrong
MAX_SYMBOL_SHARE = 0.3  # characters neither letter, digit nor whitespace
REPEATED_RUN = 10  # the same visible character this many times in a row is noise

# U+FFFD (bytes lost in decoding), control characters (binary junk), and UTF-8 read as
# Latin-1 / Windows-1252: 'é' -> 'Ã©', NBSP -> 'Â ', '’' -> 'â€™'.
_CP1252_GLYPHS = "€‚ƒ„…†‡ˆ‰Š‹ŒŽ‘’“”•–—˜™š›œžŸ"
BROKEN_ENCODING = (r"\x{FFFD}|[\x00-\x08\x0B\x0C\x0E-\x1F\x7F-\x9F]"
                   rf"|[ÂÃ][\x{{80}}-\x{{BF}}{_CP1252_GLYPHS}]|â€")
# RE2 has no back-references, so "(.)\1{9,}" is spelled out per character.
REPEATED_CHAR_RUN = "|".join(f"{re.escape(chr(c))}{{{REPEATED_RUN}}}" for c in range(33, 127))
SYMBOL = r"[^\p{L}\p{N}\s]"


def text_checks(texts: pa.Array) -> dict[str, np.ndarray]:
    """Per text, whether it passes each check (vectorised; texts are not null)."""
    chars = pc.utf8_length(texts).to_numpy(zero_copy_only=False)
    symbols = pc.count_substring_regex(texts, SYMBOL).to_numpy(zero_copy_only=False)
    return {
        "sane_length": (chars >= TEXT_MIN_CHARS) & (chars <= TEXT_MAX_CHARS),
        "not_symbol_noise": symbols <= MAX_SYMBOL_SHARE * chars,
        "no_broken_encoding": ~_matches(texts, BROKEN_ENCODING),
        "no_repeated_run": ~_matches(texts, REPEATED_CHAR_RUN),
    }


def clean_texts(texts: pa.Array) -> np.ndarray:
    """True for the texts that pass every check: the ones usable as they are."""
    checks = text_checks(texts)
    return np.logical_and.reduce(list(checks.values())) if len(texts) else np.zeros(0, bool)


def _matches(texts: pa.Array, pattern: str) -> np.ndarray:
    return pc.match_substring_regex(texts, pattern).to_numpy(zero_copy_only=False)


# -- column roles and modality -----------------------------------------------------------

MEDIA_EXTENSIONS = {
    "image": ("png", "jpg", "jpeg", "gif", "bmp", "tif", "tiff", "webp", "heic", "heif",
              "avif", "svg", "ico"),
    "audio": ("wav", "mp3", "flac", "ogg", "oga", "opus", "m4a", "aac", "wma", "aif",
              "aiff", "amr"),
    "video": ("mp4", "m4v", "mov", "avi", "mkv", "webm", "mpg", "mpeg", "wmv", "flv", "3gp"),
}
# One token (no whitespace) ending in the extension, a URL query or fragment allowed.
_MEDIA_PATTERNS = {kind: rf"^\S+\.(?:{'|'.join(exts)})(?:[?#]\S*)?$"
                   for kind, exts in MEDIA_EXTENSIONS.items()}

MODALITIES = ("tabular", "text", "mixed", "image_references", "audio_references", "media_references")


def modality_of(media_columns: dict[str, str], text_columns: list[str], text_share: float) -> str:
    """The rule: columns of media paths/URIs make the rows references to that media,
    whatever else they hold (captions, labels): "image_references" or
    "audio_references" when all of them are images or all audio, "media_references"
    otherwise (video, or both). Without media: no text column is "tabular"; text
    columns holding at least TEXT_DOMINANT_SHARE of the data's bytes are "text";
    text beside a substantial rest (ids, categories, numbers...) is "mixed"."""
    kinds = set(media_columns.values())
    if kinds:
        if kinds == {"image"}:
            return "image_references"
        if kinds == {"audio"}:
            return "audio_references"
        return "media_references"
    if not text_columns:
        return "tabular"
    return "text" if text_share >= TEXT_DOMINANT_SHARE else "mixed"


def _is_string(t: pa.DataType) -> bool:
    if pa.types.is_dictionary(t):
        t = t.value_type
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def _large_strings(values) -> pa.Array:
    """A plain large_string array (one type for samples whatever the tables hold)."""
    if isinstance(values, pa.ChunkedArray):
        values = pa.concat_arrays(values.chunks) if values.num_chunks else pa.array([], values.type)
    if pa.types.is_dictionary(values.type):
        values = values.dictionary_decode()
    return values if pa.types.is_large_string(values.type) else values.cast(pa.large_string())


def _column_roles(table: pa.Table, declared_text: list[str] | None) -> tuple[list[str], dict[str, str]]:
    """(text columns, media columns -> kind), told from an evenly spread sample of rows."""
    n = table.num_rows
    if n > ROLE_SAMPLE_ROWS:
        table = table.take(pa.array(np.linspace(0, n - 1, ROLE_SAMPLE_ROWS).astype(np.int64)))
    text, media = [], {}
    for name, column in zip(table.column_names, table.columns):
        if not _is_string(column.type) or (declared_text is not None and name in declared_text):
            continue
        values = _large_strings(column).drop_null()
        if len(values) == 0:
            continue
        for kind, pattern in _MEDIA_PATTERNS.items():
            if _share(pc.match_substring_regex(values, pattern, ignore_case=True)) >= MEDIA_SHARE:
                media[name] = kind
                break
        else:
            if declared_text is not None:
                continue
            # Long values with whitespace are prose; long tokens (hashes, pseudonyms,
            # URLs, base64) are not.
            mean_chars = pc.mean(pc.utf8_length(values)).as_py()
            if mean_chars >= TEXT_MIN_MEAN_CHARS and _share(pc.match_substring_regex(values, r"\s")) >= 0.5:
                text.append(name)
    if declared_text is not None:
        text = [name for name in declared_text
                if name in table.column_names and _is_string(table.schema.field(name).type)]
    return text, media


def _share(mask) -> float:
    return pc.mean(pc.cast(mask, pa.int8())).as_py() or 0.0


# -- blank cells ---------------------------------------------------------------------------

def blank_cells(column: pa.ChunkedArray) -> int:
    """Non-null strings that are empty or whitespace only. Trimming every value would
    copy all the text (~3 ms per 8 MB); only values that start with a whitespace byte
    can be blank, so only those (few) are trimmed."""
    if not _is_string(column.type):
        return 0
    blanks = 0
    for chunk in column.chunks:
        if len(chunk) == chunk.null_count:
            continue
        if not (pa.types.is_string(chunk.type) or pa.types.is_large_string(chunk.type)):
            trimmed = pc.utf8_trim_whitespace(_large_strings(chunk))
            blanks += int(pc.sum(pc.equal(pc.binary_length(trimmed), 0)).as_py() or 0)
            continue
        _, offsets_buffer, data_buffer = chunk.buffers()
        offset_type = np.int64 if pa.types.is_large_string(chunk.type) else np.int32
        offsets = np.frombuffer(offsets_buffer, dtype=offset_type, count=len(chunk) + 1,
                                offset=chunk.offset * np.dtype(offset_type).itemsize)
        lengths = np.diff(offsets)
        if data_buffer is None or data_buffer.size == 0:
            first_bytes = np.zeros(len(chunk), dtype=np.uint8)
        else:  # np.take: fancy indexing is ~3x slower
            first_bytes = np.take(np.frombuffer(data_buffer, dtype=np.uint8), offsets[:-1], mode="clip")
        # A superset of the first UTF-8 bytes of Unicode whitespace: ASCII space and
        # controls, 0xC2 (U+0085, U+00A0), 0xE1-0xE3 (U+1680, U+2000-U+205F, U+3000).
        candidates = ((lengths == 0) | (first_bytes <= 0x20) | (first_bytes == 0xC2)
                      | ((first_bytes >= 0xE1) & (first_bytes <= 0xE3)))
        if chunk.null_count:
            candidates &= pc.is_valid(chunk).to_numpy(zero_copy_only=False)
        picked = np.flatnonzero(candidates)
        if len(picked):
            trimmed = pc.utf8_trim_whitespace(chunk.take(pa.array(picked)))
            blanks += int(pc.sum(pc.equal(pc.binary_length(trimmed), 0)).as_py() or 0)
    return blanks


# -- sampling ------------------------------------------------------------------------------


class TextSample:
    """A uniform sample, without replacement, of at most `size` non-empty values of a
    column over a whole upload. Every row gets a random key and the sample keeps the
    values with the `size` smallest keys (a bottom-k reservoir): one pass, any number of
    tables, memory bounded by `size`, and once full only rows whose key beats the
    largest kept one (about size * table rows / rows so far) are even looked at."""

    def __init__(self, size: int):
        self.size = size
        self.keys = np.zeros(0, dtype=np.float32)
        self.values = pa.array([], pa.large_string())

    def add(self, column: pa.ChunkedArray, keys: np.ndarray) -> None:
        if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
            column = _large_strings(column)
        threshold = self.keys.max() if len(self.keys) >= self.size else np.inf
        candidates = np.flatnonzero(keys < threshold)
        if len(candidates) == 0:
            return
        if len(candidates) > self.size:
            # The first tables: absent values (null or "") out first, then copy no
            # more values than the sample can keep.
            present = _to_numpy(pc.fill_null(pc.greater(pc.binary_length(column), 0), False))
            candidates = candidates[present[candidates]]
            if len(candidates) > self.size:
                candidates = candidates[np.argpartition(keys[candidates], self.size - 1)[:self.size]]
            values = _large_strings(column.take(pa.array(candidates)))
        else:  # once full, the few rows whose key beats the sample's largest
            values = _large_strings(column.take(pa.array(candidates)))
            present = _to_numpy(pc.fill_null(pc.greater(pc.binary_length(values), 0), False))
            candidates, values = candidates[present], values.filter(pa.array(present))
        if len(candidates) == 0:
            return
        merged = np.concatenate([self.keys, keys[candidates]])
        keep = np.argpartition(merged, self.size - 1)[:self.size] if len(merged) > self.size \
            else np.arange(len(merged))
        old, new = keep[keep < len(self.keys)], keep[keep >= len(self.keys)] - len(self.keys)
        self.values = pa.concat_arrays([self.values.take(pa.array(old)), values.take(pa.array(new))])
        self.keys = np.concatenate([self.keys[old], merged[len(self.keys):][new]])


def _to_numpy(values) -> np.ndarray:
    if isinstance(values, pa.ChunkedArray):
        return np.concatenate([c.to_numpy(zero_copy_only=False) for c in values.chunks]) if values.num_chunks \
            else np.zeros(0, bool)
    return values.to_numpy(zero_copy_only=False)


# -- languages -----------------------------------------------------------------------------

LANGUAGE_TEXT_BYTES = 512  # the start of a text is enough to tell its language
UNDETERMINED = "und"  # ISO 639-2 "undetermined": no word to judge by


class LanguageDetector:
    """py3langid's model, applied to many texts at once.

    py3langid walks a text's UTF-8 bytes through a DFA whose states emit n-gram feature
    ids, then scores log1p(feature counts) against a naive-Bayes table. The same walk is
    done here for all texts in step (one numpy gather per byte position instead of one
    Python step per byte per text), and the scores as one matrix product per block of
    texts. Only ISO 639-1 (two-letter) labels are considered. Mirrors py3langid 0.4.0
    (pinned); `test_language_detector_agrees_with_py3langid` guards an upgrade.

    Memory: the model's two big tables (the DFA's transitions, 39 MB, and the feature
    scores, 28 MB) are decompressed once per process into an unlinked temporary file
    and memory-mapped only while `detect` runs. Detection runs once per upload, on a
    sample, after its tables went through: held in the heap, the tables were ~106 MB
    of the process's RSS all along (the largest single holder during an ingestion)."""

    def __init__(self):
        from py3langid.langid import MODEL_FILE, LanguageIdentifier

        model = LanguageIdentifier.from_model_file(MODEL_FILE)
        next_state = np.frombuffer(model.tk_nextmove, dtype=np.dtype(model.tk_nextmove.typecode))
        feature_scores = np.ascontiguousarray(model.nb_ptc)  # features x labels, float16
        self.row_base = np.asarray(model.tk_row, dtype=np.int64) << 8
        self.feature_of_state = np.asarray(model.tk_output, dtype=np.int64)
        self.label_priors = np.asarray(model.nb_pc, dtype=np.float32)
        self.labels = np.array(model.nb_classes)
        # Other labels (three-letter codes, 'zxx' for no language) can never win.
        self.label_priors[np.char.str_len(self.labels) != 2] = -np.inf
        # Unlinked at once (nothing is left behind, whatever ends the process); the pages
        # stay in the page cache, shared and reclaimable, not in this process's heap.
        self._file = tempfile.TemporaryFile(prefix="langid-")
        self._layout = []
        for array in (next_state, feature_scores):
            self._layout.append((self._file.tell(), array.dtype, array.shape))
            self._file.write(memoryview(array).cast("B"))
        self._file.flush()
        del model, next_state, feature_scores

    def _tables(self) -> tuple[np.ndarray, np.ndarray]:
        """(next_state, feature_scores), mapped for the caller's use (unmapped when dropped)."""
        return tuple(np.memmap(self._file, dtype=dtype, mode="r", offset=offset, shape=shape)
                     for offset, dtype, shape in self._layout)

    @staticmethod
    def _encode(text: str) -> bytes:
        # as py3langid's LanguageIdentifier._encode
        if text.isupper():
            text = text.lower()
        return unicodedata.normalize("NFC", text).encode("utf8", errors="surrogatepass")[:LANGUAGE_TEXT_BYTES]

    def detect(self, texts: list[str], block: int = 128) -> list[str]:
        """The ISO 639-1 code of each text ("und" when it yields no feature)."""
        if not texts:
            return []
        encoded = [self._encode(t) for t in texts]
        lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
        width = int(lengths.max())
        if width == 0:
            return [UNDETERMINED] * len(texts)
        in_text = np.arange(width) < lengths[:, None]
        # position-major, so that each step reads and writes contiguous memory
        text_bytes = np.zeros((width, len(texts)), dtype=np.uint8)
        text_bytes.T[in_text] = np.frombuffer(b"".join(encoded), dtype=np.uint8)
        features = np.empty((width, len(texts)), dtype=np.int64)
        state = np.zeros(len(texts), dtype=np.int64)
        next_state, feature_scores = self._tables()
        for position in range(width):
            state = next_state[self.row_base[state] + text_bytes[position]]
            features[position] = self.feature_of_state[state]
        features = features.T
        features[~in_text] = -1
        codes = []
        # One BLAS thread: the products are small (128 texts at a time), and OpenBLAS's
        # other threads spun on after them, ~0.14 s of a core per 1,000 texts at the end
        # of an upload, the core the endpoint was completing the data object on.
        with threadpool_limits(limits=1, user_api="blas"):
            for start in range(0, len(texts), block):
                codes.extend(self._classify(features[start:start + block], feature_scores))
        return codes

    def _classify(self, features: np.ndarray, feature_scores: np.ndarray) -> list[str]:
        rows, positions = np.nonzero(features >= 0)
        found = features[rows, positions]
        distinct, column = np.unique(found, return_inverse=True)
        counts = np.bincount(rows * len(distinct) + column, minlength=len(features) * len(distinct))
        counts = counts.reshape(len(features), len(distinct)).astype(np.float32)
        scores = np.log1p(counts) @ feature_scores[distinct].astype(np.float32) + self.label_priors
        codes = self.labels[scores.argmax(axis=1)]
        has_features = np.bincount(rows, minlength=len(features)) > 0
        return [str(code) if ok else UNDETERMINED for code, ok in zip(codes, has_features)]


@functools.cache
def language_detector() -> LanguageDetector:
    """Loaded once per process (~0.8 s: the model is decompressed from the wheel; see
    `LanguageDetector` for where it is kept)."""
    return LanguageDetector()


def language_shares(texts: pa.Array) -> dict[str, float]:
    """ISO 639-1 code -> share of the texts, largest first. Texts without a word of
    three letters (numbers, codes) are "und" rather than a guess."""
    if len(texts) == 0:
        return {}
    has_words = _matches(texts, r"\p{L}{3}")
    words = texts.filter(pa.array(has_words))
    codes = Counter(language_detector().detect(words.to_pylist()))
    codes[UNDETERMINED] += int((~has_words).sum())
    return {code: count / len(texts) for code, count in codes.most_common() if count}


# -- the report ----------------------------------------------------------------------------


@dataclass
class QualityReport:
    score: float
    completeness: float
    validity: float
    uniqueness: float
    text_quality: float | None
    languages: dict[str, dict[str, float]]
    modality: str
    rows: int
    text_columns: list[str] = field(default_factory=list)
    media_columns: dict[str, str] = field(default_factory=dict)  # column -> image/audio/video
    sampled_texts: int = 0  # texts checked and language-detected, all text columns together

    def as_dict(self) -> dict:
        return {
            "score": round(self.score, 4),
            "completeness": round(self.completeness, 4),
            "validity": round(self.validity, 4),
            "uniqueness": round(self.uniqueness, 4),
            "text_quality": None if self.text_quality is None else round(self.text_quality, 4),
            "languages": {column: {code: round(share, 4) for code, share in shares.items()}
                          for column, shares in self.languages.items()},
            "modality": self.modality,
            "rows": self.rows,
            "text_columns": list(self.text_columns),
            "media_columns": dict(self.media_columns),
            "sampled_texts": self.sampled_texts,
        }


def weighted_score(completeness: float, validity: float, uniqueness: float, text_quality: float | None) -> float:
    dimensions = {"completeness": completeness, "validity": validity, "uniqueness": uniqueness,
                  "text_quality": text_quality}
    present = {name: value for name, value in dimensions.items() if value is not None}
    return sum(WEIGHTS[name] * value for name, value in present.items()) / sum(WEIGHTS[name] for name in present)


class UploadQuality:
    """Scores one upload: `add` each table of kept rows, then `finish` with the counts
    of the rows refinement removed."""

    def __init__(self, text_columns: list[str] | None = None, *, sample_size: int = SAMPLE_SIZE, seed: int = 0):
        self.declared_text_columns = list(text_columns) if text_columns is not None else None
        self.text_columns: list[str] | None = None  # decided on the first table with rows
        self.media_columns: dict[str, str] = {}
        self.sample_size = sample_size
        self.samples: dict[str, TextSample] = {}
        self.rows = 0
        self.cells = 0
        self.missing_cells = 0
        self.text_bytes = 0
        self.all_bytes = 0
        self._random = np.random.default_rng(seed)  # seeded: same upload, same report

    def add(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        if self.text_columns is None:
            self.text_columns, self.media_columns = _column_roles(table, self.declared_text_columns)
            self.samples = {name: TextSample(self.sample_size) for name in self.text_columns}
        self.rows += table.num_rows
        self.cells += table.num_rows * table.num_columns
        for name, column in zip(table.column_names, table.columns):
            self.missing_cells += column.null_count + blank_cells(column)
            self.all_bytes += column.nbytes
            if name in self.samples:
                self.text_bytes += column.nbytes
        present = [name for name in self.samples if name in table.column_names]
        if present:
            # one key per row, shared by the columns; float32 is twice as fast to draw
            keys = self._random.random(table.num_rows, dtype=np.float32)
            for name in present:
                self.samples[name].add(table.column(name), keys)

    def finish(self, *, rows_in: int, rows_invalid: int, rows_duplicate: int,
               rows_near_duplicate: int) -> QualityReport:
        validity = _ratio_kept(rows_invalid, rows_in)
        uniqueness = _ratio_kept(rows_duplicate + rows_near_duplicate, rows_in)
        completeness = 1.0 - self.missing_cells / self.cells if self.cells else 0.0
        text_scores, languages = [], {}
        for name, sample in self.samples.items():
            if len(sample.values):
                text_scores.append(float(clean_texts(sample.values).mean()))
                languages[name] = language_shares(sample.values)
        text_quality = float(np.mean(text_scores)) if text_scores else None
        text_columns = self.text_columns or []
        return QualityReport(
            score=weighted_score(completeness, validity, uniqueness, text_quality) if self.rows else 0.0,
            completeness=completeness,
            validity=validity,
            uniqueness=uniqueness,
            text_quality=text_quality,
            languages=languages,
            modality=modality_of(self.media_columns, text_columns,
                                 self.text_bytes / self.all_bytes if self.all_bytes else 0.0),
            rows=self.rows,
            text_columns=list(text_columns),
            media_columns=dict(self.media_columns),
            sampled_texts=sum(len(sample.values) for sample in self.samples.values()),
        )


def _ratio_kept(removed: int, rows_in: int) -> float:
    # No row in: nothing was wrong.
    return min(1.0, max(0.0, 1.0 - removed / rows_in)) if rows_in > 0 else 1.0


# -- a dataset -----------------------------------------------------------------------------


def dataset_quality(uploads: Iterable[tuple[int, dict]]) -> dict:
    """The quality of a dataset from its fresh uploads' (rows, QualityReport.as_dict()):
    score and dimensions are means weighted by rows (text quality over the uploads
    that have text), language shares per column likewise (an upload's shares stand
    for its rows), modality is the one holding the most rows. With no row at all, the
    score is 0 and the dimensions are None: there is nothing to measure."""
    dimensions = ("score", "completeness", "validity", "uniqueness", "text_quality")
    sums, weights = defaultdict(float), defaultdict(int)
    language_sums: dict[str, Counter] = defaultdict(Counter)
    language_rows: Counter = Counter()
    modality_rows: Counter = Counter()
    count = total = 0
    for rows, report in uploads:
        count += 1
        if rows <= 0:
            continue
        total += rows
        for name in dimensions:
            if report.get(name) is not None:
                sums[name] += rows * report[name]
                weights[name] += rows
        for column, shares in (report.get("languages") or {}).items():
            language_rows[column] += rows
            for code, share in shares.items():
                language_sums[column][code] += rows * share
        modality_rows[report.get("modality")] += rows
    result = {"uploads": count, "rows": total}
    for name in dimensions:
        result[name] = round(sums[name] / weights[name], 4) if weights[name] else None
    if result["score"] is None:
        result["score"] = 0.0
    result["languages"] = {
        column: {code: round(weighted / language_rows[column], 4) for code, weighted in codes.most_common()}
        for column, codes in language_sums.items()}
    result["modality"] = modality_rows.most_common(1)[0][0] if modality_rows else None
    return result
