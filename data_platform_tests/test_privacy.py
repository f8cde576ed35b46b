"""Pseudonymisation and redaction: keyed and stable pseudonyms, free-text redaction
without false positives, PII column detection, and no raw PII left after apply_privacy
on the generator's data."""

import hashlib
import hmac
import logging
import os
import pickle
import re
import stat
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from data_platform.config import Settings
from data_platform.privacy import (
    PATTERNS, PII_KINDS, Pseudonymizer, PseudonymKeyError, apply_privacy, detect_pii_columns, load_pseudonym_key, subject_key,
)

KEY = b"test-master-key-0123456789abcdef"
# shared/ sits beside the repository (on developers' machines and in CI).
GEN_DATA = Path(os.environ.get("BENCH_GEN_DATA", Path(__file__).resolve().parents[2] / "shared" / "bench" / "gen_data.py"))


def tenant_key(key: bytes, tenant: str) -> bytes:
    return hmac.new(key, b"tenant:" + tenant.encode(), hashlib.sha256).digest()


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> pa.Table:
    """20,000 rows from the shared generator (5% of texts embed an email, IP or phone)."""
    assert GEN_DATA.exists(), f"data generator not found at {GEN_DATA} (set BENCH_GEN_DATA)"
    out = tmp_path_factory.mktemp("gen") / "sample.parquet"
    subprocess.run([sys.executable, str(GEN_DATA), "--rows", "20000", "--format", "parquet", "--out", str(out),
                    "--no-meta"], check=True, capture_output=True)
    return pq.read_table(out)


# -- pseudonyms --------------------------------------------------------------------------


def test_pseudonym_is_hmac_of_the_normalised_value_under_the_tenant_key():
    p = Pseudonymizer(KEY, "acme")
    expected = "ps_" + hmac.new(tenant_key(KEY, "acme"), b"bob@x.com", hashlib.sha256).hexdigest()[:32]
    assert p.pseudonym("  Bob@X.com\t", "email") == expected
    assert re.fullmatch(r"ps_[0-9a-f]{32}", expected)


def test_pseudonyms_stable_across_instances_and_distinct_across_tenants_and_keys():
    a1, a2 = Pseudonymizer(KEY, "acme"), Pseudonymizer(KEY, "acme")
    assert a1.pseudonym("alice@example.com", "email") == a2.pseudonym("alice@example.com", "email")
    assert a1.pseudonym("alice@example.com") != Pseudonymizer(KEY, "globex").pseudonym("alice@example.com")
    assert a1.pseudonym("alice@example.com") != Pseudonymizer(KEY[::-1], "acme").pseudonym("alice@example.com")
    assert a1.pseudonym("alice@example.com") != a1.pseudonym("alice@example.org")


def test_pseudonym_is_not_a_plain_hash_and_does_not_contain_the_value():
    p = Pseudonymizer(KEY, "acme")
    value = "alice@example.com"
    ps = p.pseudonym(value, "email")
    for digest in (hashlib.sha256(value.encode()).hexdigest(), hashlib.md5(value.encode()).hexdigest()):
        assert digest[:32] not in ps
        assert ps[3:] not in digest
    assert value not in ps and "alice" not in ps


def test_emails_and_ips_are_case_insensitive_names_are_not():
    p = Pseudonymizer(KEY, "acme")
    assert p.pseudonym("Alice@Example.COM", "email") == p.pseudonym("alice@example.com", "email")
    assert p.pseudonym("2001:DB8::1", "ip") == p.pseudonym("2001:db8::1", "ip")
    assert p.pseudonym("Alice Martin", "name") != p.pseudonym("alice martin", "name")
    assert p.pseudonym(" Alice Martin ", "name") == p.pseudonym("Alice Martin", "name")


def test_non_ascii_addresses_are_lower_cased_by_unicode_rules():
    # Columns of ASCII text are lower-cased byte by byte; one non-ASCII value anywhere in
    # a column sends it through the Unicode lower-casing.
    p = Pseudonymizer(KEY, "acme")
    mixed = p.pseudonymize(pa.array(["ÉLODIE@Exemple.FR", "Bob@X.io", None]), "email").to_pylist()
    assert mixed[0] == p.pseudonym("élodie@exemple.fr", "email")
    assert mixed[1] == p.pseudonym("bob@x.io", "email")
    ascii_only = p.pseudonymize(pa.array(["Bob@X.io", "CAROL@Y.ORG"]), "email").to_pylist()
    assert ascii_only == [p.pseudonym("bob@x.io", "email"), p.pseudonym("carol@y.org", "email")]


def test_pseudonymize_keeps_nulls_and_length_and_matches_pseudonym():
    p = Pseudonymizer(KEY, "acme")
    values = ["a@x.io", None, "B@x.io", "a@x.io", "  ", None, "b@x.io"]
    out = p.pseudonymize(pa.array(values), "email")
    assert out.type == pa.string() and len(out) == len(values)
    assert out.is_null().to_pylist() == [v is None for v in values]
    got = out.to_pylist()
    assert got[0] == got[3] == Pseudonymizer(KEY, "acme").pseudonym("a@x.io", "email")
    assert got[2] == got[6] != got[0]
    assert got[4] == ""  # blank: no pseudonym, no subject
    chunked = pa.chunked_array([values[:3], values[3:]], pa.large_string())
    assert p.pseudonymize(chunked, "email").to_pylist() == got
    assert p.pseudonymize(pa.array([], pa.string())).to_pylist() == []


def test_subject_keys_are_those_of_the_distinct_pseudonyms_present():
    p = Pseudonymizer(KEY, "acme")
    keys = p.subject_keys(pa.array(["a@x.io", "A@x.io", None, "b@x.io", ""]), "email")
    expected = sorted(subject_key(p.pseudonym(v, "email")) for v in ("a@x.io", "b@x.io"))
    assert keys.tolist() == expected
    # The key is the pseudonym's first 64 bits, signed: both halves of the range occur.
    assert subject_key("ps_ffffffffffffffff" + "0" * 16) == -1
    assert subject_key("ps_7fffffffffffffff" + "0" * 16) == 2**63 - 1
    with pytest.raises(ValueError):
        subject_key("not-a-pseudonym")


def test_kernel_hmac_equals_hmac_new_across_threads_and_slices():
    p = Pseudonymizer(KEY, "acme")
    # More values than one kernel call takes, so the column is split across threads.
    values = [f"User{i}@X.io " for i in range(100_000)] * 2 + [None, ""]
    out = p.pseudonymize(pa.array(values), "email").to_pylist()
    assert p.computed == 200_000  # blanks and nulls are not hashed
    key = tenant_key(KEY, "acme")
    expected = ["ps_" + hmac.new(key, v.strip().lower().encode(), hashlib.sha256).hexdigest()[:32]
                for v in values[:100_000]]
    assert out[:100_000] == expected and out[100_000:200_000] == expected
    assert out[200_000:] == [None, ""]
    # A slice with a nonzero offset, and large strings, give the same pseudonyms.
    sliced = pa.array(values, pa.large_string()).slice(99_990, 20)
    assert p.pseudonymize(sliced, "email").to_pylist() == out[99_990:100_010]


@pytest.mark.parametrize("sha_extensions", [True, False])
def test_kernel_hmac_of_every_length_with_and_without_the_cpus_sha_instructions(sha_extensions):
    """Values of 0 to 130 bytes (one block holds at most 55, two 119), UTF-8, in odd and
    even counts (short values are hashed two at a time), equal Python's hmac on both of
    the kernel's paths (the CPU's SHA instructions, where it has them, and OpenSSL)."""
    import random

    from data_platform._native import hmac_kernel

    rng = random.Random(4)
    values = ["".join(rng.choice("aZ9.@-é€😀") for _ in range(n)) for n in range(131) for _ in range(3)]
    values = [v.encode()[:n].decode("utf-8", "ignore") for v, n in zip(values, range(len(values)))] + values
    previous = hmac_kernel.set_sha_extensions(sha_extensions)
    try:
        p = Pseudonymizer(KEY, "acme")
        key = tenant_key(KEY, "acme")
        for count in (len(values), len(values) - 1, 1, 2, 3):
            arr = pa.array(values[:count], pa.string())
            out = p.pseudonymize(arr).to_pylist()
            assert out == ["ps_" + hmac.new(key, v.strip().encode(), hashlib.sha256).hexdigest()[:32] if v.strip()
                           else "" for v in values[:count]]
    finally:
        hmac_kernel.set_sha_extensions(previous)


def test_unknown_kind_and_short_key_are_refused():
    with pytest.raises(ValueError, match="unknown PII kind"):
        Pseudonymizer(KEY, "acme").pseudonym("x", "mail")
    with pytest.raises(PseudonymKeyError, match="16 bytes"):
        Pseudonymizer(b"short", "acme")


def test_repr_and_pickle_reveal_no_key():
    p = Pseudonymizer(KEY, "acme")
    p.pseudonym("a@x.io")
    text = repr(p) + str(p)
    tk = tenant_key(KEY, "acme")
    for secret in (KEY.decode(), KEY.hex(), repr(KEY), tk.hex(), repr(tk)):
        assert secret not in text
    assert "acme" in text
    with pytest.raises(TypeError):
        pickle.dumps(p)
    assert not any(isinstance(v, bytes) and v in (KEY, tk) for v in vars(p).values())


# -- redaction ---------------------------------------------------------------------------

REDACTED = [
    # the generator's three forms
    ("Contact me at alice.martin123@example.com please.", "Contact me at [email] please.", "email"),
    ("Contact me at yusuf_muller4366@corp.example.org please.", "Contact me at [email] please.", "email"),
    ("Request came from 27.173.189.229.", "Request came from [ip].", "ip"),
    ("Request came from 2001:db8:a28d:2bcf::88bd.", "Request came from [ip].", "ip"),
    ("Request came from 2001:db8:0:f::1.", "Request came from [ip].", "ip"),
    ("Call +33 6 12 34 56 78.", "Call [phone].", "phone"),
    # other emails
    ("mail: First.Last+tag@sub.domain.co.uk, thanks", "mail: [email], thanks", "email"),
    ("écrire à josé.garcía@empresa.es svp", "écrire à [email] svp", "email"),
    # other IPs
    ("from 10.0.0.1:8080 and 255.255.255.255", "from [ip]:8080 and [ip]", "ip"),
    ("192.168.0.1,10.0.0.2 ip:172.16.0.3 (8.8.8.8)", "[ip],[ip] ip:[ip] ([ip])", "ip"),
    ("full 2001:0db8:85a3:0000:0000:8a2e:0370:7334 here", "full [ip] here", "ip"),
    ("loopback ::1 and prefix 2001:db8:: end", "loopback [ip] and prefix [ip] end", "ip"),
    ("mapped ::ffff:192.168.1.1 ok", "mapped [ip] ok", "ip"),
    ("link-local fe80::1ff:fe23:4567:890a%eth0 ok", "link-local [ip] ok", "ip"),
    ("url http://[2001:DB8::8A2E:370:7334]/x", "url http://[[ip]]/x", "ip"),
    # other phones
    ("call (555) 123-4567 now", "call [phone] now", "phone"),
    ("call 555-123-4567 now", "call [phone] now", "phone"),
    ("call 555.123.4567 now", "call [phone] now", "phone"),
    ("call +1-202-555-0143 now", "call [phone] now", "phone"),
    ("call +1 (202) 555-0143 now", "call [phone] now", "phone"),
    ("appelez le 06 12 34 56 78 ou 01.23.45.67.89", "appelez le [phone] ou [phone]", "phone"),
    ("ring +44 (0) 20 7946 0958 or 020 7946 0958", "ring [phone] or [phone]", "phone"),
    ("Tel. 030 1234567 oder +49 30 1234567", "Tel. [phone] oder [phone]", "phone"),
    ("móvil +34 612 345 678", "móvil [phone]", "phone"),
    ("+33612345678", "[phone]", "phone"),
]

NOT_REDACTED = [
    "La latencia de fn-28894 superó los 4829 ms en horas punta.",
    "Nous avons été facturés 2964 euros pour lb-82398 alors qu'il a été supprimé.",
    "This is blocking our release scheduled for 2024.",
    "Upgraded to v1.2.3 then 10.4.1, build 2.0.1-rc3.",
    "The invoice shows $1,299.99 and 12.50 EUR, 1.234,56 € en total.",
    "Die Instanz vm-12345 in eu-central-1 meldet Fehler E403 und ERR_TIMEOUT.",
    "Created 2024-08-16T00:33:43Z, again at 10:30:45 on 16/08/2024 and 2024-08-16.",
    "Disk usage on db-99 grew by 5000 GB; quota 1 234 567 units; +15 % since 2023.",
    "Ticket 12345678 for order 0001234, ISO 9001, RFC 1918, pi 3.14159.",
    "rec-002a-000000001-3779b1 usr_0006556 QUOTA_EXCEEDED",
    "Scores were 200 and 300, ratio 3:2, at 8:30 am.",
    "Revenue grew +5 000 000 dollars, +12.5 % on 2023.",
    "In C++ use std::vector, not a :: b; MAC 00:1a:2b:3c:4d:5e.",
    "",
]


@pytest.mark.parametrize("text,expected,kind", REDACTED)
def test_redact_text_replaces_each_form(text, expected, kind):
    out, counts = Pseudonymizer(KEY, "acme").redact_text(pa.array([text]))
    assert out.to_pylist() == [expected]
    assert counts[kind] == expected.count(f"[{kind}]")
    assert sum(counts.values()) == counts[kind]


@pytest.mark.parametrize("text", NOT_REDACTED)
def test_redact_text_leaves_ordinary_numbers(text):
    out, counts = Pseudonymizer(KEY, "acme").redact_text(pa.array([text]))
    assert out.to_pylist() == [text]
    assert counts == {"email": 0, "ip": 0, "phone": 0}


def test_redact_text_on_a_column_keeps_nulls_order_and_counts():
    texts = [t for t, _, _ in REDACTED] + [None] + NOT_REDACTED
    out, counts = Pseudonymizer(KEY, "acme").redact_text(pa.chunked_array([texts[:5], texts[5:]]))
    assert out.to_pylist() == [e for _, e, _ in REDACTED] + [None] + NOT_REDACTED
    for kind in ("email", "ip", "phone"):
        assert counts[kind] == sum(e.count(f"[{kind}]") for _, e, _ in REDACTED)


def test_redaction_counts_are_the_patterns_matches(sample):
    """Equal to RE2's match counts pattern by pattern (each on the output of the one
    before), also where a text already holds placeholders next to what is replaced."""
    texts = pa.chunked_array([sample.column("text").combine_chunks(), pa.array([
        "[email] a@b.io", "[ip]10.0.0.1 and [ip] 10.0.0.2", "[phone]+33 6 12 34 56 78 [phone]", "[email][ip][phone]"])])
    out, counts = Pseudonymizer(KEY, "acme").redact_text(texts)
    expected, current = {}, texts.combine_chunks()
    for kind in ("email", "ip", "phone"):
        expected[kind] = pc.sum(pc.count_substring_regex(current, PATTERNS[kind])).as_py()
        current = pc.replace_substring_regex(current, PATTERNS[kind], {"ip": r"\1[ip]"}.get(kind, f"[{kind}]"))
    assert counts == expected and min(expected.values()) > 100
    # Each pattern saw only the rows holding its trigger: the same text as all of them on all rows.
    assert out.to_pylist() == current.to_pylist()
    assert out.to_pylist()[-4:] == ["[email] [email]", "[ip][ip] and [ip] [ip]", "[phone][phone] [phone]",
                                    "[email][ip][phone]"]


def test_the_compiled_scan_selects_what_the_candidate_pattern_matches(sample):
    """The kernel that picks the texts the exact patterns see decides what RE2 decides
    with any of the triggers: on the generator's texts, on random strings dense in digits,
    separators, colons and non-ASCII, and on sliced, null-holding and large arrays."""
    import random

    from data_platform.privacy import _TRIGGERS, pii_kinds

    def re2(arr):
        return pc.fill_null(pc.match_substring_regex(arr, "|".join(_TRIGGERS.values())), False).to_pylist()

    def may_hold_pii(arr):
        return (pii_kinds(arr) != 0).tolist()

    texts = sample.column("text")
    assert may_hold_pii(texts) == re2(texts)
    assert 0.02 < sum(re2(texts)) / len(texts) < 0.5  # the comparison is not vacuous
    rng = random.Random(7)
    alphabet = "0123456789aAfFgx@:+ ./)-(\u00e9\u20ac\n"
    values = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 10))) for _ in range(20_000)]
    values += [None, "", "@", "1 2", "1 (2", "1 ((2", "a:b", "g:a", "::", "+1", "+", "1-", "é:é", "1/2"]
    arr = pa.array(values, pa.string())
    expected = re2(arr)
    assert 0.2 < sum(expected) / len(values) < 0.8
    assert may_hold_pii(arr) == expected
    assert may_hold_pii(arr.slice(777, 5000)) == expected[777:5777]
    assert may_hold_pii(arr.cast(pa.large_string())) == expected
    assert may_hold_pii(pa.chunked_array([arr.slice(0, 3), arr.slice(3)])) == expected
    assert may_hold_pii(pa.array([None, None], pa.string())) == [False, False]


def test_the_compiled_scan_flags_each_kind_where_its_trigger_matches(sample):
    """Bit by bit: each kind's flag is where RE2 finds its trigger, on the generator's
    texts and on random strings dense in the bytes the triggers are made of."""
    import random

    from data_platform.privacy import _KIND_BITS, _TRIGGERS, pii_kinds

    rng = random.Random(11)
    alphabet = "0123456789aAfFgx@:+ ./)-(,\u00e9\u20ac\n"
    values = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12))) for _ in range(20_000)]
    # 16 bytes and more are scanned 16 at a time, then each hit is checked byte by byte:
    # triggers at every offset of a vector, across two, and cut by the value's ends
    filler = "xg é,€"
    values += ["".join(rng.choice(alphabet if rng.random() < 0.15 else filler) for _ in range(rng.randint(13, 70)))
               for _ in range(20_000)]
    values += [None, "1.2", "1.(2", "1 2", "a:b", "::", "+1", "1.2@", "9.9.9.9 +1 a@b"]
    for arr in (sample.column("text").combine_chunks(), pa.array(values, pa.string())):
        kinds = pii_kinds(arr)
        for kind, trigger in _TRIGGERS.items():
            expected = np.array(pc.fill_null(pc.match_substring_regex(arr, trigger), False).to_pylist())
            assert 0 < expected.sum() < len(arr)
            assert (((kinds & _KIND_BITS[kind]) != 0) == expected).all(), kind
        assert not kinds[np.array(arr.is_null().to_pylist())].any()


# -- detection ---------------------------------------------------------------------------


def test_detect_pii_columns_on_generated_data(sample):
    found = detect_pii_columns(sample, {})
    assert found == {"user_email": "email", "ip_address": "ip", "text": "free_text"}
    assert detect_pii_columns(sample, {"user_email": "email", "text": "free_text"}) == {"ip_address": "ip"}


def test_detect_phone_column_and_thresholds():
    n = 1000
    table = pa.table({
        "phone": [("+33 6 12 34 56 %02d" if i % 2 else "(555) 123-%04d") % (i % 100) for i in range(n)],
        "category": ["billing", "outage", "access", "security"] * (n // 4),
        "few_emails": [f"u{i}@x.io" if i % 10 < 3 else "no contact given" for i in range(n)],  # 30%: text
        "rare": [f"u{i}@x.io" if i == 500 else "nothing here" for i in range(n)],  # 0.1%: below 1%
        "count": list(range(n)),
        "empty": pa.nulls(n, pa.string()),
    })
    assert detect_pii_columns(table, {}) == {"phone": "phone", "few_emails": "free_text"}
    assert detect_pii_columns(table, {}, threshold=0.25) == {"phone": "phone", "few_emails": "email"}
    assert detect_pii_columns(table, {}, sample=10) == {"phone": "phone", "few_emails": "free_text"}


# -- apply_privacy on the generator's data -----------------------------------------------


def _string_values(table: pa.Table) -> list[str]:
    values = []
    for column in table.columns:
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            values += [v for v in column.to_pylist() if v is not None]
    return values


def _leaks(values: list[str], forbidden: set[str]) -> set[str]:
    """The forbidden strings occurring anywhere inside `values`. Brute force only over the
    values with the telltale of a kind: an email can only occur where there is an "@", an
    IPv6 of the generator where there is "::", an IPv4 where there is a dotted quad."""
    dotted = re.compile(r"\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}")
    tells = {"@": lambda v: "@" in v, "::": lambda v: "::" in v, "+": lambda v: "+" in v,
             "v4": lambda v: dotted.search(v) is not None}
    found = set()
    for tell, has in tells.items():
        group = [f for f in forbidden if has(f)] if tell != "v4" else [f for f in forbidden if dotted.fullmatch(f)]
        if not group:
            continue
        for v in filter(has, values):
            found.update(f for f in group if f in v)
    unclassified = [f for f in forbidden if not any(has(f) for has in tells.values())]
    assert not unclassified, unclassified[:5]  # the search above would not see them
    return found


def test_apply_privacy_leaves_no_raw_pii(sample):
    pii = {**detect_pii_columns(sample, {}), "user_id": "name"}
    p = Pseudonymizer(KEY, sample["tenant"][0].as_py())
    out, report = apply_privacy(sample, p, pii)

    # What the input holds: the PII columns, plus what the generator embeds in texts.
    texts = [t for t in sample["text"].to_pylist() if t]
    embedded = set()
    for t in texts:
        embedded.update(re.findall(r"Contact me at (\S+@\S+?) please", t))
        embedded.update(re.findall(r"Request came from (\S+?)\.(?:\s|$)", t))
        embedded.update(re.findall(r"Call (\+33(?: \d\d?)+)\.", t))
    assert len(embedded) > 500  # ~5% of 20,000 texts
    forbidden = set(sample["user_email"].drop_null().to_pylist()) | set(sample["ip_address"].drop_null().to_pylist())
    forbidden |= embedded
    # The search finds each kind when present (checked on a few, wrapped in text)...
    planted = set(list(embedded)[:20]) | set(sample["user_email"][:20].to_pylist())
    planted |= set(sample["ip_address"][:20].to_pylist())
    assert _leaks([f"x{v}, y" for v in planted], forbidden) == planted
    values = _string_values(out)
    assert _leaks(values, forbidden) == set()  # ...and none in the output

    # Nothing in any output string looks like an email, IP or phone either.
    for name in out.column_names:
        if pa.types.is_string(out[name].type):
            for kind, pattern in PATTERNS.items():
                hits = pc.sum(pc.match_substring_regex(out[name], pattern)).as_py() or 0
                assert hits == 0, (name, kind)
    assert not any("@" in v for v in values)

    # Same shape, PII columns now pseudonyms, everything else untouched.
    assert out.num_rows == sample.num_rows and out.column_names == sample.column_names
    for name in ("user_email", "ip_address", "user_id"):
        assert out.schema.field(name).type == pa.string()
        assert pc.all(pc.match_substring_regex(out[name], r"^ps_[0-9a-f]{32}$")).as_py()
        assert report["pseudonymised"][name] == sample[name].length() - sample[name].null_count
    for name in ("record_id", "category", "priority", "cost", "created_at", "tenant"):
        assert out[name].equals(sample[name])
    redacted = pc.sum(pc.match_substring_regex(out["text"], r"\[(email|ip|phone)\]")).as_py()
    assert redacted >= len([t for t in texts if re.search(r"Contact me at|Request came from|Call \+33", t)])
    assert report["redacted"]["email"] > 0 and report["redacted"]["ip"] > 0 and report["redacted"]["phone"] > 0
    written = set()
    for name in ("user_email", "ip_address", "user_id"):
        written |= set(out[name].to_pylist())
    assert report["subjects"].tolist() == sorted(subject_key(s) for s in written)


def test_apply_privacy_batches_share_pseudonyms(sample):
    pii = {"user_email": "email", "ip_address": "ip", "text": "free_text"}
    whole, _ = apply_privacy(sample, Pseudonymizer(KEY, "acme"), pii)
    p = Pseudonymizer(KEY, "acme")
    half = sample.num_rows // 2
    parts = [apply_privacy(sample.slice(0, half), p, pii)[0], apply_privacy(sample.slice(half), p, pii)[0]]
    assert pa.concat_tables(parts).equals(whole)
    other, _ = apply_privacy(sample, Pseudonymizer(KEY, "globex"), pii)
    assert not pc.any(pc.equal(other["user_email"], whole["user_email"])).as_py()


def test_apply_privacy_nulls_missing_columns_and_unknown_kinds():
    table = pa.table({"email": ["a@x.io", None, "b@x.io"], "note": [None, "mail a@x.io", "ok"]})
    out, report = apply_privacy(table, Pseudonymizer(KEY, "acme"),
                                {"email": "email", "note": "free_text", "absent": "phone"})
    assert out["email"].null_count == 1 and out["email"][1].as_py() is None
    assert out["note"].to_pylist() == [None, "mail [email]", "ok"]
    assert report["pseudonymised"] == {"email": 2}
    assert report["redacted"] == {"email": 1, "ip": 0, "phone": 0}
    assert len(report["subjects"]) == 2
    with pytest.raises(ValueError, match="unknown PII kind"):
        apply_privacy(table, Pseudonymizer(KEY, "acme"), {"email": "e-mail"})
    assert set(PII_KINDS) == {"email", "phone", "ip", "name", "free_text"}


# -- key loading -------------------------------------------------------------------------


def local_settings(tmp_path: Path) -> Settings:
    return Settings.from_env({"DATA_PLATFORM_HOME": str(tmp_path / "home")})


def s3_settings(tmp_path: Path) -> Settings:
    return Settings.from_env({"DATA_PLATFORM_HOME": str(tmp_path / "home"),
                              "DATA_PLATFORM_STORAGE_URL": "s3://bucket/prefix"})


def test_key_from_environment(tmp_path):
    env = {"DATA_PLATFORM_PSEUDONYM_KEY": "clé secrète très longue"}
    assert load_pseudonym_key(s3_settings(tmp_path), env) == "clé secrète très longue".encode()
    assert load_pseudonym_key(local_settings(tmp_path), env) == "clé secrète très longue".encode()
    assert not (tmp_path / "home" / "pseudonym.key").exists()


def test_short_key_refused_without_echoing_it(tmp_path):
    with pytest.raises(PseudonymKeyError, match="at least 16") as err:
        load_pseudonym_key(local_settings(tmp_path), {"DATA_PLATFORM_PSEUDONYM_KEY": "hunter2-short"})
    assert "hunter2" not in str(err.value)


def test_s3_without_key_refused_with_a_clear_message(tmp_path):
    with pytest.raises(PseudonymKeyError) as err:
        load_pseudonym_key(s3_settings(tmp_path), {})
    assert "DATA_PLATFORM_PSEUDONYM_KEY is required when storage is s3://" in str(err.value)
    assert not (tmp_path / "home").exists()


def test_generated_key_is_private_persisted_reused_and_never_logged(tmp_path, caplog):
    settings = local_settings(tmp_path)
    path = tmp_path / "home" / "pseudonym.key"
    with caplog.at_level(logging.DEBUG):
        key = load_pseudonym_key(settings, {})
    assert re.fullmatch(rb"[0-9a-f]{64}", key)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["pseudonym.key"]  # no temp file left
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and r.name == "data_platform.privacy"]
    assert len(warnings) == 1 and str(path) in warnings[0].getMessage()

    caplog.clear()
    with caplog.at_level(logging.DEBUG):
        assert load_pseudonym_key(settings, {}) == key
        assert load_pseudonym_key(Settings.from_env({"DATA_PLATFORM_HOME": str(tmp_path / "home")}), {}) == key
        p = Pseudonymizer(key, "acme")
        logging.getLogger("data_platform.privacy").info("made %r", p)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert caplog.records  # the %r line above was captured...
    assert key.decode() not in caplog.text and key.hex() not in caplog.text  # ...without the key
    # The file's text is the key exactly as the variable would give it.
    assert load_pseudonym_key(settings, {"DATA_PLATFORM_PSEUDONYM_KEY": path.read_text().strip()}) == key


def test_concurrent_generation_agrees_on_one_key(tmp_path):
    settings = local_settings(tmp_path)
    barrier = threading.Barrier(8)
    keys = []

    def load():
        barrier.wait()
        keys.append(load_pseudonym_key(settings, {}))

    threads = [threading.Thread(target=load) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(keys) == 8 and len(set(keys)) == 1
    assert sorted(p.name for p in (tmp_path / "home").iterdir()) == ["pseudonym.key"]


def test_damaged_key_file_is_refused_not_replaced(tmp_path):
    path = tmp_path / "home" / "pseudonym.key"
    path.parent.mkdir()
    path.write_text("abc\n")
    with pytest.raises(PseudonymKeyError, match="pseudonym.key"):
        load_pseudonym_key(local_settings(tmp_path), {})
    assert path.read_text() == "abc\n"


def test_kernel_refuses_buffers_that_do_not_match():
    from data_platform._native import hmac_kernel

    block = bytes(64)
    offsets = pa.array([0, 3, 6], pa.int32()).buffers()[1]
    with pytest.raises(ValueError, match="64-byte"):
        hmac_kernel.pseudonyms(b"short", block, b"ps_", 32, offsets, b"abcdef", 0, 2, False)


def _string_kernel(name: str):
    """call(offsets, data, start, count) of each kernel over Arrow string buffers."""
    from data_platform._native import hmac_kernel, minhash_kernel, pii_scan_kernel, rowhash_kernel
    from data_platform.neardup import MinHashParams

    block, p = bytes(64), MinHashParams()
    mult, add = (a.astype("<u2").tobytes() for a in p.permutations())
    return {
        "hmac": lambda o, d, s, n: hmac_kernel.pseudonyms(block, block, b"ps_", 32, o, d, s, n, False),
        "pii_scan": lambda o, d, s, n: pii_scan_kernel.candidates(o, d, s, n, False, bytearray(n)),
        "rowhash": lambda o, d, s, n: rowhash_kernel.string_hashes(o, d, s, n, False, bytearray(8 * n)),
        "minhash": lambda o, d, s, n: minhash_kernel.signatures(
            o, d, s, n, False, mult, add, p.bands, p.rows, p.ident_shift, bytearray(4 * n * p.bands),
            bytearray(n * p.sketch_bytes), bytearray(2 * n)),
    }[name]


@pytest.mark.parametrize("kernel", ["hmac", "pii_scan", "rowhash", "minhash"])
def test_string_kernels_refuse_offsets_outside_their_buffers(kernel):
    """Each compiled kernel checks the buffers it is given before its loop runs without
    the GIL: offsets past the data, a slice past the offsets, offsets that go back."""
    import numpy as np

    call = _string_kernel(kernel)
    offsets = pa.array([0, 3, 6], pa.int32()).buffers()[1]
    call(offsets, b"abcdef", 0, 2)  # in bounds: accepted
    with pytest.raises(ValueError, match="data buffer"):
        call(offsets, b"abc", 0, 2)
    with pytest.raises(ValueError, match="offsets buffer"):
        call(offsets, b"abcdef", 1, 2)
    with pytest.raises(ValueError, match="decrease"):
        call(pa.py_buffer(np.array([0, 4, 2], np.int32).tobytes()), b"abcdef", 0, 2)
