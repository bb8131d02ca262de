"""Settings parsing and the secret box, pure."""

from __future__ import annotations

import base64

import pytest

from app.security import DecryptionError, SecretBox, hash_secret, new_secret
from app.settings import SettingsError, load_settings


def test_defaults_and_schedule(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POLLINATOR_DELIVERY_RETRY_SCHEDULE", "1, 2.5,3")
    settings = load_settings()
    assert settings.delivery_retry_schedule == (1.0, 2.5, 3.0)
    assert settings.api_port == 8080
    assert settings.min_refresh_minutes == 1.0


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("POLLINATOR_API_PORT", "eighty"),
        ("POLLINATOR_DELIVERY_RETRY_SCHEDULE", "5,soon"),
        ("POLLINATOR_DELIVERY_RETRY_SCHEDULE", "5,-1"),
        ("POLLINATOR_SECRET_KEY", "short"),
        ("POLLINATOR_DATABASE_URL", "sqlite:///x.db"),
        ("POLLINATOR_MIN_REFRESH_MINUTES", "0"),
        ("POLLINATOR_ALLOW_PRIVATE_CALLBACKS", "perhaps"),
    ],
)
def test_bad_setting_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, var: str, value: str
) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert var in str(info.value)
    assert "\n" not in str(info.value)


def test_secret_box_round_trip_and_wrong_key() -> None:
    box = SecretBox("k" * 40)
    # Long enough that a random token cannot contain it by chance (a 2-byte "AT" was
    # in about 1 token in 40), so finding it means the box stored the plaintext.
    token = "access-token-" + "Q7vx" * 8
    blob = box.seal({"access_token": token})
    assert token.encode() not in blob
    assert token.encode() not in base64.urlsafe_b64decode(blob)
    assert box.seal({"access_token": token}) != blob  # a fresh IV per seal
    assert box.open(blob) == {"access_token": token}
    assert box.open(None) == {}
    with pytest.raises(DecryptionError):
        SecretBox("j" * 40).open(blob)


def test_secrets_hash() -> None:
    secret = new_secret()
    assert len(secret) >= 40
    assert hash_secret(secret) == hash_secret(secret)
    assert secret not in hash_secret(secret)
