"""Credentials in text: cloud and VCS tokens by their issuers' formats, private keys,
JSON web tokens, passwords in URLs, and high-entropy values assigned to names that say
they are secret (`api_key = ...`, `"token": "..."`).

A token format is matched exactly (its prefix, alphabet and length), so ordinary code,
hashes in lock files or UUIDs do not match; the generic rule needs both a secret-ish
name and a value random enough (Shannon entropy over its characters) not to be a word,
a placeholder or a variable.
"""

from __future__ import annotations

import math
import re
from collections import Counter

from inferplane.guardrails.pii import Finding

_FORMATS: list[tuple[str, re.Pattern[str]]] = [
    (t, re.compile(p))
    for t, p in [
        (
            "AWS_ACCESS_KEY",
            r"(?<![A-Z0-9])(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA)[A-Z0-9]{16}(?![A-Z0-9])",
        ),
        (
            "GITHUB_TOKEN",
            r"(?<!\w)(?:gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{60,255})(?!\w)",
        ),
        ("GITLAB_TOKEN", r"(?<!\w)glpat-[A-Za-z0-9_-]{20,}(?![\w-])"),
        ("SLACK_TOKEN", r"(?<!\w)xox[abposr]-[A-Za-z0-9-]{10,}(?![\w-])"),
        ("SLACK_WEBHOOK", r"https://hooks\.slack\.com/services/T[A-Z0-9]+/B[A-Z0-9]+/[A-Za-z0-9]+"),
        ("STRIPE_KEY", r"(?<!\w)(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{20,}(?!\w)"),
        ("GOOGLE_API_KEY", r"(?<![\w-])AIza[0-9A-Za-z_-]{35}(?![\w-])"),
        ("OPENAI_API_KEY", r"(?<![\w-])sk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_-]{32,}(?![\w-])"),
        ("ANTHROPIC_API_KEY", r"(?<![\w-])sk-ant-[A-Za-z0-9_-]{32,}(?![\w-])"),
        ("NPM_TOKEN", r"(?<!\w)npm_[A-Za-z0-9]{36}(?!\w)"),
        ("PYPI_TOKEN", r"(?<![\w-])pypi-AgEIcHlwaS5vcmc[A-Za-z0-9_-]{50,}(?![\w-])"),
        ("TWILIO_KEY", r"(?<!\w)SK[0-9a-f]{32}(?!\w)"),
        ("SENDGRID_KEY", r"(?<![\w.])SG\.[A-Za-z0-9_-]{22}\.[A-Za-z0-9_-]{43}(?![\w.-])"),
        ("AZURE_STORAGE_KEY", r"AccountKey=[A-Za-z0-9+/]{86}=="),
        # A private key's header with key material after it (not a template's `<paste>`).
        (
            "PRIVATE_KEY",
            r"-----BEGIN (?:[A-Z]+ )*PRIVATE KEY(?: BLOCK)?-----(?:[^<]{0,200}?)[A-Za-z0-9+/]{32}",
        ),
        ("VAULT_TOKEN", r"(?<![\w.])hv[sbr]\.[A-Za-z0-9_-]{24,}(?![\w-])"),
        ("HUGGING_FACE_TOKEN", r"(?<!\w)hf_[A-Za-z0-9]{30,}(?!\w)"),
        (
            "JWT",
            r"(?<![\w-])eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{16,}(?![\w-])",
        ),
        ("URL_PASSWORD", r"\b[a-z][a-z0-9+.-]{1,20}://[^\s:/@]{0,64}:([^\s:/@]{3,128})@[^\s/@]+"),
        # HTTP credentials: a header's, and command lines' (curl -u user:pass, -p pass).
        (
            "HTTP_AUTHORIZATION",
            r"(?i)\bauthorization[\"']?\s*[:=]\s*[\"']?(?:basic|bearer|token)\s+([A-Za-z0-9+/=._~-]{12,})",
        ),
        (
            "COMMAND_LINE_PASSWORD",
            r"(?:\s-u\s+[\"']?[^\s:\"']+:|\s(?:--password|--token|--api-key)[\s=]|\s-p[\s=]?)"
            r"[\"']?([^\s\"'-][^\s\"']{5,127})",
        ),
    ]
]  # fmt: skip

# A value assigned to a name that says it is secret: `NAME = "value"`, `name: value`,
# `--name value`, `"name": "value"`.
_ASSIGNED = re.compile(
    r"(?i)(?<!public )(?<!public_)(?:key|secret|token|pass(?:w(?:or)?[dt])?|pwd|credential|auth|"
    r"kennwort|contrase[nñ]a|mot de passe|wachtwoord|senha|parola d'ordine|has[lł]o|"
    r"l[öo]senord|adgangskode)[\w-]{0,20}[\"']?"
    # what may stand between the name and its value: XML's `value=`, or a few words of
    # prose ending in "is" (ist, est, es...) or a colon: `the admin password is ...`
    r"(?:\s+value\s*=|[^\n:=\"']{0,40}?\s(?:is|ist|est|es|è|é|är|er|lautet)\b|"
    r"[^\n:=\"']{0,40}?(?=:))?"
    # The value: anything but spaces and quotes (a sentence's last dot or comma left out).
    r"[\"']?\s*(?:[:=,]|\s)\s*[\"']?([^\s\"'<>]{10,256}?)[.,;)]?(?=[\s\"'<>]|$)"
)
_PLACEHOLDERS = re.compile(
    r"(?i)^(?:x+|0+|\*+|<.*>|\$\{.*\}|\$\(.*\)|\$[a-z_]\w*|%\(.*\)s|\{\{.*\}\}|your[_-].*|"
    r".*token|changeme|example.*|placeholder.*|redacted|"
    r"(?:os\.)?environ.*|getenv.*|process\.env.*|none|null|true|false|self\..*)$"
)


# What each format's matches contain, whatever else: a pattern runs only over a text
# that holds it (most texts hold none: a scan of ~5 KB went from 4.1 to ~0.3 ms).
_MARKS = {
    "AWS_ACCESS_KEY": ("AKIA", "ASIA", "AGPA", "AIDA", "AROA", "ANPA", "ANVA", "AIPA"),
    "GITHUB_TOKEN": ("gh", "github_pat_"),
    "GITLAB_TOKEN": ("glpat-",),
    "SLACK_TOKEN": ("xox",),
    "SLACK_WEBHOOK": ("hooks.slack.com",),
    "STRIPE_KEY": ("_live_", "_test_"),
    "GOOGLE_API_KEY": ("AIza",),
    "OPENAI_API_KEY": ("sk-",),
    "ANTHROPIC_API_KEY": ("sk-ant-",),
    "NPM_TOKEN": ("npm_",),
    "PYPI_TOKEN": ("pypi-",),
    "TWILIO_KEY": ("SK",),
    "SENDGRID_KEY": ("SG.",),
    "AZURE_STORAGE_KEY": ("AccountKey=",),
    "PRIVATE_KEY": ("PRIVATE KEY",),
    "VAULT_TOKEN": ("hvs.", "hvb.", "hvr."),
    "HUGGING_FACE_TOKEN": ("hf_",),
    "JWT": ("eyJ",),
    "URL_PASSWORD": ("://",),
    "HTTP_AUTHORIZATION": ("uthorization", "UTHORIZATION"),
    "COMMAND_LINE_PASSWORD": (" -u ", " -p", " --password", " --token", " --api-key"),
}
# Kinds whose secret is the first group (the rest is context), read like an assigned
# value: a placeholder or a word is none.
_GROUPED = frozenset({"URL_PASSWORD", "HTTP_AUTHORIZATION", "COMMAND_LINE_PASSWORD"})
_NAMES: tuple[str, ...] = ("key", "secret", "token", "pass", "pwd", "credential", "auth")
_NAMES += ("kennwort", "contrase", "mot de passe", "wachtwoord", "senha", "parola", "has")
_NAMES += ("senord", "adgangskode")


def find_secrets(text: str, threshold: float = 3.5) -> list[Finding]:
    """Credentials in `text`. `threshold`: the entropy (bits a character) a value assigned
    to a secret-sounding name needs to count."""
    found: list[Finding] = []
    for kind, pattern in _FORMATS:
        if not any(mark in text for mark in _MARKS[kind]):
            continue
        for m in pattern.finditer(text):
            if kind in _GROUPED:
                if _PLACEHOLDERS.match(m.group(1)) or entropy(m.group(1)) < 2.5:
                    continue
                found.append(Finding(kind, m.start(1), m.end(1)))
            elif _random(m.group()):  # not ghp_xxxx..., xoxb-your-..., AKIAXXXX...
                found.append(Finding(kind, m.start(), m.end()))
    lower = text.lower()
    named = any(name in lower for name in _NAMES)
    for m in _ASSIGNED.finditer(text) if named else ():
        value = m.group(1)
        if _PLACEHOLDERS.match(value) or not _mixed(value):
            continue
        bits = entropy(value)
        if bits >= threshold:
            found.append(Finding("SECRET", m.start(1), m.end(1), min(1.0, bits / 5)))
    return _merged(found)


def entropy(value: str) -> float:
    """Shannon entropy of the value's characters, in bits per character."""
    counts = Counter(value)
    n = len(value)
    return -sum(c / n * math.log2(c / n) for c in counts.values())


def _random(token: str) -> bool:
    """Whether a provider token's variable part (after its prefix: `ghp_`, `xoxb-`,
    `AKIA`) looks random, as a real one does, rather than a placeholder."""
    tail = re.split(r"[_-]", token)[-1] if re.search(r"[_-]", token) else token[4:]
    return not _PLACEHOLDERS.match(tail) and entropy(tail[:64]) >= 2.5


def _mixed(value: str) -> bool:
    """Letters and digits both (a random key has them; identifiers and words seldom)."""
    return any(c.isdigit() for c in value) and any(c.isalpha() for c in value)


def _merged(found: list[Finding]) -> list[Finding]:
    kept: list[Finding] = []
    for f in sorted(found, key=lambda f: (f.start, -(f.end - f.start))):
        if kept and f.start < kept[-1].end:
            continue  # inside one found already (by a more specific rule, or longer)
        kept.append(f)
    return kept
