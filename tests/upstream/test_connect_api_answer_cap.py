"""The Connect API client reads at most MAX_ANSWER_BYTES of one answer (decoded).

Found by review: the worker read every answer whole (urllib3's preloaded body, requests'
content), gzip decoded, with no bound. One huge or endlessly decompressing answer (a broken
edge, a hostile proxy) ran a worker of a few hundred MB out of memory with its leases held.
Now such an answer is Garmin unavailable for that call (a download: FileTooLarge, which the
sync skips as it skips an activity without a file), and the rest of it is never read.
"""

from __future__ import annotations

import json

import pytest

from auth_service.domain.models import GarminTokens
from garmin_client.answer_cap import MAX_ANSWER_BYTES
from garmin_client.connect_api import ConnectApi
from garmin_client.errors import FileTooLarge, Unavailable
from garmin_client.settings import UpstreamSettings
from garmin_emulator import ACTIVITIES_PATH, DOWNLOAD_PREFIX, GarminEmulator

from .test_connect_api_proxy import _ForwardingProxy, proxy  # noqa: F401 - the fixture

pytestmark = pytest.mark.timeout(60)

# A gzip bomb: a kilobyte-sized answer that decodes to twice the cap.
BOMB = b"[" + b" " * (2 * MAX_ANSWER_BYTES) + b"]"


@pytest.fixture(params=["urllib3", "proxy"])
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways the client sends: urllib3's pool, or requests' Session through a proxy the
    environment names."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    if request.param == "proxy":
        proxy = request.getfixturevalue("proxy")
        assert isinstance(proxy, _ForwardingProxy)
        for name in ("HTTP_PROXY", "HTTPS_PROXY"):
            monkeypatch.setenv(name, f"http://127.0.0.1:{proxy.server_address[1]}")
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
    return str(request.param)


def test_a_gzip_bomb_is_refused_unread(
    settings: UpstreamSettings, emulator: GarminEmulator, tokens: GarminTokens, path: str
) -> None:
    emulator.fail_next(ACTIVITIES_PATH, 200, body=BOMB, gzip=True)
    with ConnectApi(settings, tokens.domain) as api, pytest.raises(Unavailable) as refused:
        api.get_json(ACTIVITIES_PATH, tokens.oauth2.access_token, {"start": 0, "limit": 5})
    assert "larger than 32 MiB" in str(refused.value)


def test_a_download_past_the_cap_is_refused(
    settings: UpstreamSettings, emulator: GarminEmulator, tokens: GarminTokens
) -> None:
    emulator.fail_next(DOWNLOAD_PREFIX, 200, body=b"P" * (MAX_ANSWER_BYTES + 1))
    with ConnectApi(settings, tokens.domain) as api, pytest.raises(FileTooLarge) as refused:
        api.download(f"{DOWNLOAD_PREFIX}1234", tokens.oauth2.access_token)
    assert "larger than 32 MiB" in str(refused.value)


def test_a_gzipped_answer_within_the_cap_reads_as_before(
    settings: UpstreamSettings, emulator: GarminEmulator, tokens: GarminTokens, path: str
) -> None:
    page = [{"activityId": n, "activityName": "x" * 1000} for n in range(2000)]  # ~2 MB
    emulator.fail_next(ACTIVITIES_PATH, 200, body=json.dumps(page), gzip=True)
    with ConnectApi(settings, tokens.domain) as api:
        assert api.get_json(ACTIVITIES_PATH, tokens.oauth2.access_token) == page
