"""The structured PII and secrets detectors: what they find, and the look-alikes they
leave alone."""

from __future__ import annotations

import pytest

from inferplane.guardrails.pii import STRUCTURED, find_pii
from inferplane.guardrails.secrets import find_secrets


def _found(text: str) -> list[tuple[str, str]]:
    return [(f.type, text[f.start : f.end]) for f in find_pii(text, frozenset(STRUCTURED))]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "write to jane.doe+news@mail.example.co.uk today",
            ("EMAIL_ADDRESS", "jane.doe+news@mail.example.co.uk"),
        ),
        ("call (415) 555-2671 after six", ("PHONE_NUMBER", "(415) 555-2671")),
        ("ring +44 20 7946 0958", ("PHONE_NUMBER", "+44 20 7946 0958")),
        ("Tel. 030 901820", ("PHONE_NUMBER", "030 901820")),
        ("card 4111-1111-1111-1111 exp 12/29", ("CREDIT_CARD", "4111-1111-1111-1111")),
        ("Amex 378282246310005.", ("CREDIT_CARD", "378282246310005")),
        ("IBAN GB82 WEST 1234 5698 7654 32", ("IBAN_CODE", "GB82 WEST 1234 5698 7654 32")),
        ("pay to FR1420041010050500013M02606", ("IBAN_CODE", "FR1420041010050500013M02606")),
        ("SSN 536-22-1234 on file", ("US_SSN", "536-22-1234")),
        ("from 192.168.10.4 at noon", ("IP_ADDRESS", "192.168.10.4")),
        ("host 2001:db8::8a2e:370:7334 is up", ("IP_ADDRESS", "2001:db8::8a2e:370:7334")),
        ("the new address is 198.51.100.60.", ("IP_ADDRESS", "198.51.100.60")),
        ("mi teléfono 91 226 76 30, gracias", ("PHONE_NUMBER", "91 226 76 30")),
        ("SSN 087-82-0392 on the W-2", ("US_SSN", "087-82-0392")),
    ],
)
def test_each_type_is_found_whole(text: str, expected: tuple[str, str]) -> None:
    assert _found(text) == [expected]


@pytest.mark.parametrize(
    "text",
    [
        "order 4111 1111 1111 1112 shipped",  # fails the Luhn check
        "version 1.2.3 released; 300.1.1.1 is no address; 10.0.0.1.5 neither",
        "SSN-like 666-12-3456, 900-12-3456 and 123-00-4567 are invalid",
        "IBAN GB82 WEST 1234 5698 7654 33",  # wrong check digits
        "the meeting is on 2026-11-28 at 10:30",
        "ticket #20231128 and invoice 55512",
        "user@localhost has no domain; a@b is not one either",
        "ratio 3:4:5 and time 12:30:45",
        "assets/logo@2x.png and report@3x.jpg for retina screens",
        "Order #100-4421873-2291104 was cancelled",  # passes Luhn, grouped 3-7-7
        "shipped on 03-05-2024, released 01.02.2024, ZIP+4 94103-1234",
        "Invoice INV-2023-000481 and badge 666-45-8508",
    ],
)
def test_look_alikes_are_left_alone(text: str) -> None:
    assert _found(text) == []


def test_only_the_asked_types_are_looked_for() -> None:
    text = "jane@example.org, 4111 1111 1111 1111"
    assert [f.type for f in find_pii(text, frozenset({"CREDIT_CARD"}))] == ["CREDIT_CARD"]


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("aws_access_key_id = AKIAIOSFODNN7EXAMPLE", "AWS_ACCESS_KEY"),
        ("token ghp_a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8 in CI", "GITHUB_TOKEN"),
        ("GITLAB=glpat-xYz12345678901234567", "GITLAB_TOKEN"),
        ("xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx", "SLACK_TOKEN"),
        ("stripe sk_live_51HxQjKLmNoPqRsTuVwXyZ012", "STRIPE_KEY"),
        (
            "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0t",
            "PRIVATE_KEY",
        ),
        (
            "auth: eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0."
            "dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
            "JWT",
        ),
        ("postgres://admin:S3cr3tPassw0rd@db.internal:5432/app", "URL_PASSWORD"),
        ('client_secret = "q8Zr4T1vX9mK2pL7wY3nB6cD"', "SECRET"),
        ("Authorization: Basic c3ZjLWRlcGxveTpsclJYVjNyb3N5Rngwd01vSlZ4NQ==", "HTTP_AUTHORIZATION"),
        ("curl -u admin:ht2HSWQM8c3U9yDq8Ad https://ci.example.com", "COMMAND_LINE_PASSWORD"),
        ("docker login -u deploy -p CwX3HHpzVipxgSSkC75M registry", "COMMAND_LINE_PASSWORD"),
        ("redis://:KhMYxY7C4voklVQfmmab@cache:6379/0", "URL_PASSWORD"),
        ("Le mot de passe du compte admin est LwQs0bduvIOkE4OMhr", "SECRET"),
        ("Passwort für den Testserver: oph2ds4f7nfg8Sen5f", "SECRET"),
        ('ENCRYPTION_KEY="a8HkP2c9DaXGl8NONqxwF95iNdq7ZvXJ"', "SECRET"),
        ("Your temporary password is 1Ay7faL?zhk3. It expires soon.", "SECRET"),
        ("mysql -h db -u root -p'Dl9empyJbFJX=spj' orders", "COMMAND_LINE_PASSWORD"),
        (
            'headers = {"Authorization": "Bearer k8Qzx4tgj8kyrJrJfq-5a3pI5X1Y"}',
            "HTTP_AUTHORIZATION",
        ),
        ("vault login hvs.5pLW7bAOWMHypYGo8LT9auGt", "VAULT_TOKEN"),
    ],
)
def test_credentials_are_found(text: str, kind: str) -> None:
    assert kind in [f.type for f in find_secrets(text)]


@pytest.mark.parametrize(
    "text",
    [
        "password = os.environ['DB_PASSWORD']",
        "token = get_token(user_id)",
        'api_key = "<your-api-key>"',
        "postgres://user:${DB_PASS}@localhost/app",
        "sha256 = e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "id = 123e4567-e89b-12d3-a456-426614174000",
        "def authenticate(self, credentials):",
        "secret_santa_participants = load_participants()",
        "GITHUB_TOKEN=ghp_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
        "SLACK_BOT_TOKEN=xoxb-your-bot-token",
        "-----BEGIN PUBLIC KEY-----\nMIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAu1SU1L",
        "the password must be at least 12 characters long",
        "-----BEGIN RSA PRIVATE KEY-----\n<paste your private key here>",
        "AWS_ACCESS_KEY_ID=AKIAXXXXXXXXXXXXXXXX",
        'curl -u "$CI_USER:$CI_API_TOKEN" https://ci.example.com',
    ],
)
def test_ordinary_code_is_not_a_secret(text: str) -> None:
    assert find_secrets(text) == []
