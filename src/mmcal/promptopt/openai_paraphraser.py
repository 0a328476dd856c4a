"""Paraphrasing through any OpenAI-compatible chat-completions endpoint, with the standard library.

One request per sample (``n: 1`` plus a per-sample ``seed``), because many compatible servers
ignore ``n`` and the per-sample seed keeps each candidate reproducible where the server honours it.
The API key is read from the environment only (``api_key_env``, default ``OPENAI_API_KEY``): a key in
the config would travel into the job's params and from there into provenance records, so
:func:`check_no_key` rejects it, and it never appears in messages or reprs.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request

from mmcal.errors import ConfigError
from mmcal.promptopt.base import Paraphraser, ParaphraserError, instruction_settings, paraphrase_messages

DEFAULT_BASE_URL = "https://api.openai.com/v1"
RETRY_STATUSES = {408, 409, 429, 500, 502, 503, 504}


def check_no_key(cfg: dict | None) -> None:
    """A paraphraser config must not hold the key itself (ConfigError naming the variable to use)."""
    cfg = cfg or {}
    if cfg.get("api_key") is not None:
        env = cfg.get("api_key_env") or "OPENAI_API_KEY"
        raise ConfigError(
            f"paraphraser: 'api_key' in the config is not accepted (it would be recorded with the job's params); "
            f"set the environment variable {env} instead"
        )


class OpenAIParaphraser(Paraphraser):
    kind = "openai"

    def __init__(
        self,
        model: str | None = None,
        base_url: str | None = None,
        api_key: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        temperature: float = 1.0,
        max_tokens: int = 32,
        timeout_s: float = 30.0,
        retries: int = 2,
        retry_wait_s: float = 2.0,
        max_attempts: int = 3,
    ):
        check_no_key({"api_key": api_key, "api_key_env": api_key_env})
        if not model:
            raise ConfigError("openai paraphraser: 'model' is required (the served model's name)")
        self.model = model
        self.base_url = base_url
        self.api_key_env = api_key_env
        self.temperature = float(temperature)
        self.max_tokens = int(max_tokens)
        self.timeout_s = float(timeout_s)
        self.retries = int(retries)
        self.retry_wait_s = float(retry_wait_s)
        self.max_attempts = int(max_attempts)
        self.requests = 0  # requests sent (tests check a cached replay sends none)

    def __repr__(self) -> str:
        return f"OpenAIParaphraser(model={self.model!r}, base_url={self.base_url!r})"

    def settings(self) -> dict:
        # What the model is and how it is asked; where it is served (URL) and the key are not
        # part of it, so a cache made against one endpoint replays against any other.
        return {
            "model": self.model,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            **instruction_settings(),
        }

    @property
    def endpoint(self) -> str:
        base = self.base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL
        return base.rstrip("/") + "/chat/completions"

    def _api_key_value(self) -> str | None:
        return os.environ.get(self.api_key_env) or None

    def _redact(self, text: str) -> str:
        key = self._api_key_value()
        return text.replace(key, "***") if key else text

    def sample(self, parent: str, sample_seed: int) -> str | None:
        body = {
            "model": self.model,
            "messages": paraphrase_messages(parent),
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "n": 1,
            "seed": sample_seed,
        }
        payload = self._post(body)
        try:
            content = payload["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise ParaphraserError(f"unexpected reply from {self.endpoint}: no choices[0].message.content") from None
        return content if isinstance(content, str) else None

    def _post(self, body: dict) -> dict:
        url = self.endpoint
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        key = self._api_key_value()
        if key:
            headers["Authorization"] = f"Bearer {key}"
        data = json.dumps(body).encode()
        for attempt in range(self.retries + 1):
            last_try = attempt == self.retries
            request = urllib.request.Request(url, data=data, headers=headers, method="POST")
            self.requests += 1
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    raw = response.read()
            except urllib.error.HTTPError as exc:
                detail = exc.read(300).decode("utf-8", "replace").strip()
                if exc.code in RETRY_STATUSES and not last_try:
                    time.sleep(self.retry_wait_s * (attempt + 1))
                    continue
                raise ParaphraserError(
                    self._redact(
                        f"paraphrase request to {url} failed: HTTP {exc.code} {exc.reason}"
                        + (f": {detail}" if detail else "")
                    )
                ) from None
            except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
                reason = getattr(exc, "reason", exc)
                if not last_try:
                    time.sleep(self.retry_wait_s * (attempt + 1))
                    continue
                what = (
                    f"timed out after {self.timeout_s:g} s" if isinstance(reason, TimeoutError) else f"failed: {reason}"
                )
                raise ParaphraserError(f"paraphrase request to {url} {what}") from None
            try:
                return json.loads(raw)
            except json.JSONDecodeError:
                raise ParaphraserError(f"reply from {url} is not JSON: {raw[:200]!r}") from None
        raise AssertionError("unreachable")
