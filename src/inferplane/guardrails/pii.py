"""Structured personal data in text: e-mail addresses, phone numbers, payment card numbers,
IBANs, US social security numbers and IP addresses, named as Presidio names them.

Each type is found by a pattern and then validated, so that what looks like one but is
not (an order number, a version string, a date) is left alone: card numbers pass the
Luhn check, IBANs their country's length and the ISO 7064 mod-97 check, SSNs the
Social Security Administration's rules (no area 000, 666 or 900-999, no group 00, no
serial 0000), IP addresses Python's parser, phone numbers Google's libphonenumber
(`phonenumbers`: valid for their region, written as people write them).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import phonenumbers


@dataclass(frozen=True, slots=True)
class Finding:
    """A span of the text a detector flagged: its type, where, how sure (0 to 1)."""

    type: str
    start: int
    end: int
    score: float = 1.0


STRUCTURED = (
    "EMAIL_ADDRESS",
    "PHONE_NUMBER",
    "CREDIT_CARD",
    "IBAN_CODE",
    "US_SSN",
    "IP_ADDRESS",
)

# Regions whose national formats are read (an international `+` number: any region).
PHONE_REGIONS = ("US", "GB", "DE", "FR", "ES", "IT", "NL", "IN", "AU")

_EMAIL = re.compile(
    r"(?<![\w.+-])[A-Za-z0-9](?:[A-Za-z0-9._%+-]{0,62}[A-Za-z0-9])?"
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}(?![\w-])"
)
# At least 6 digits, with what numbers are written with between them.
_DIGITS = re.compile(r"\+?\(?\d(?:[\d\s().\-/]{0,3}\d){5,}")
_CARD = re.compile(r"(?<![\d-])(?:\d[ -]?){12,18}\d(?![\d-])")
_IBAN = re.compile(
    r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?(?![A-Za-z0-9])"
)
_SSN = re.compile(r"(?<![\d-])(\d{3})([- ]?)(\d{2})\2(\d{4})(?![\d-])")
_IPV4 = re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?!\d|\.\d)")
_IPV6 = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])")

# IBAN lengths by country (SWIFT's registry).
_IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22,
    "BH": 22, "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22,
    "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FO": 18, "FR": 27,
    "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28, "HR": 21, "HU": 28,
    "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20,
    "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "MC": 27, "MD": 24,
    "ME": 22, "MK": 19, "MR": 27, "MT": 31, "MU": 30, "NL": 18, "NO": 15, "PK": 24,
    "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "SA": 24, "SC": 31,
    "SE": 24, "SI": 19, "SK": 24, "SM": 27, "ST": 25, "SV": 28, "TL": 23, "TN": 24,
    "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
}  # fmt: skip


def find_pii(text: str, entities: frozenset[str]) -> list[Finding]:
    """The structured personal data of the `entities` types in `text`, in order; where
    two overlap, the longer wins (a card number is not also a phone number)."""
    found: list[Finding] = []
    for kind, finder in _FINDERS.items():
        if kind in entities:
            found.extend(finder(text))
    return _without_overlaps(found)


def _emails(text: str) -> Iterator[Finding]:
    for m in _EMAIL.finditer(text):
        if m.group().rpartition(".")[2].lower() not in _FILE_EXTENSIONS:  # logo@2x.png
            yield Finding("EMAIL_ADDRESS", m.start(), m.end())


def _phones(text: str) -> Iterator[Finding]:
    """libphonenumber's matcher (numbers valid for their region) over the stretches of the
    text that hold enough digits to be a number, with room around them for its context
    rules: over a whole 5 KB prompt, mostly prose, it took ~4 ms, measured. An
    international number reads the same from any region: one is asked."""
    seen: set[tuple[int, int]] = set()
    valid = phonenumbers.Leniency.VALID
    for stretch in _DIGITS.finditer(text):
        start = max(0, stretch.start() - 8)
        part = text[start : stretch.end() + 8]
        regions = PHONE_REGIONS[:1] if stretch.group().startswith("+") else PHONE_REGIONS
        for region in regions:
            for match in phonenumbers.PhoneNumberMatcher(part, region, leniency=valid):
                span = (start + match.start, start + match.end)
                if span not in seen and not _not_a_phone(text, *span):
                    seen.add(span)
                    yield Finding("PHONE_NUMBER", *span)


# Written like a number but something else: a date (2024-03-01, 01.03.2024, 03-05-2024),
# an address's dotted quad, a ZIP+4 code, the 3-2-4 shape of an SSN (valid or not).
_NOT_PHONES = re.compile(
    r"\d{4}[-./]\d{1,2}[-./]\d{1,2}|\d{1,2}[-./]\d{1,2}[-./]\d{2,4}|"
    r"\d{1,3}(?:\.\d{1,3}){3}|\d{5}-\d{4}|\d{3}-\d{2}-\d{4}"
)


def _not_a_phone(text: str, start: int, end: int) -> bool:
    """A date, a dotted quad, a ZIP+4 code, an SSN's shape, or digits inside an
    identifier (a letter or a `-`/`_`/`#` joined to them, as in INV-2023-000481)."""
    number = text[start:end].lstrip("+")
    if _NOT_PHONES.fullmatch(number):
        return True
    before = text[start - 1] if start else " "
    after = text[end] if end < len(text) else " "
    return before.isalnum() or before in "-_#/" or after.isalnum() or after in "-_#/"


def _cards(text: str) -> Iterator[Finding]:
    for m in _CARD.finditer(text):
        digits = re.sub(r"[ -]", "", m.group())
        groups = [len(g) for g in re.split(r"[ -]", m.group())]
        # Written in groups, a card number is grouped as cards print it: by 4 (the last
        # group shorter), or 4-6-5 (American Express); an order number 3-7-7 is not one.
        grouped = len(groups) == 1 or groups == [4, 6, 5] or set(groups[:-1]) == {4}
        if grouped and 13 <= len(digits) <= 19 and _luhn(digits) and len(set(digits)) > 1:
            yield Finding("CREDIT_CARD", m.start(), m.end())


def _ibans(text: str) -> Iterator[Finding]:
    for m in _IBAN.finditer(text):
        iban = m.group().replace(" ", "")
        if _IBAN_LENGTHS.get(iban[:2]) == len(iban) and _mod97(iban):
            yield Finding("IBAN_CODE", m.start(), m.end())


def _ssns(text: str) -> Iterator[Finding]:
    for m in _SSN.finditer(text):
        area, group, serial = m.group(1), m.group(3), m.group(4)
        if area in ("000", "666") or area[0] == "9" or group == "00" or serial == "0000":
            continue
        yield Finding("US_SSN", m.start(), m.end(), 1.0 if m.group(2) else 0.6)


def _ips(text: str) -> Iterator[Finding]:
    for pattern in (_IPV4, _IPV6):
        for m in pattern.finditer(text):
            try:
                ipaddress.ip_address(m.group())
            except ValueError:
                continue
            yield Finding("IP_ADDRESS", m.start(), m.end())


# Image, document and code files named like addresses (icon@2x.png): not e-mail.
_FILE_EXTENSIONS = frozenset(
    {"png", "jpg", "jpeg", "gif", "svg", "webp", "bmp", "ico", "tif", "tiff", "pdf", "txt"}
    | {"csv", "json", "yaml", "yml", "xml", "html", "htm", "css", "js", "ts", "md", "log"}
    | {"doc", "docx", "xls", "xlsx", "ppt", "pptx"}
)

_FINDERS: dict[str, Callable[[str], Iterator[Finding]]] = {
    "EMAIL_ADDRESS": _emails,
    "PHONE_NUMBER": _phones,
    "CREDIT_CARD": _cards,
    "IBAN_CODE": _ibans,
    "US_SSN": _ssns,
    "IP_ADDRESS": _ips,
}


def _luhn(digits: str) -> bool:
    total = 0
    for i, d in enumerate(reversed(digits)):
        n = int(d) * (2 if i % 2 else 1)
        total += n - 9 if n > 9 else n
    return total % 10 == 0


def _mod97(iban: str) -> bool:
    moved = iban[4:] + iban[:4]
    return int("".join(str(int(c, 36)) for c in moved)) % 97 == 1


def _without_overlaps(found: list[Finding]) -> list[Finding]:
    """Where findings overlap, one stays: a type checked by its own rules (a checksum, a
    parser) before a phone number, which many digit strings resemble; then the longer."""
    kept: list[Finding] = []
    for f in sorted(found, key=lambda f: (f.type == "PHONE_NUMBER", -(f.end - f.start))):
        if all(f.end <= k.start or f.start >= k.end for k in kept):
            kept.append(f)
    return sorted(kept, key=lambda f: f.start)
