"""A seam new features plug into: a backend is one registered class with its own settings check, and
the library's defaults (a backend's concurrency, a judge's temperature) live in the library."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import write_prompts

from aidsafe import FakeChatModel, ModelSettings, Pipeline
from aidsafe.errors import AidsafeError
from aidsafe.judge import Judge
from aidsafe.models import backend_names, default_concurrency, register_backend, unregister_backend

pytestmark = pytest.mark.usefixtures("clean_env")  # no AIDSAFE_* variable of the calling shell changes what a test sees


# --- a backend is one registered class with its own settings check ------------------------


def test_a_registered_backend_is_chosen_by_name_with_its_own_check_and_default() -> None:
    @register_backend("scripted-test")
    class Scripted(FakeChatModel):
        default_concurrency = 5

        def __init__(self, settings: ModelSettings) -> None:
            super().__init__(ModelSettings(backend="scripted-test", model="agree"))
            self.settings = settings

        @classmethod
        def check(cls, settings: ModelSettings) -> None:
            if settings.model != "ok":
                raise AidsafeError("scripted-test needs --model ok")

    try:
        assert "scripted-test" in backend_names()
        pipe = Pipeline("aidsafe", "aidsafe5", ModelSettings(backend="scripted-test", model="ok"))
        record = pipe.run_one("q")
        assert record.status == "ok" and record.models["intent"] == "scripted-test:ok"
        assert pipe.default_concurrency == 5
        with pytest.raises(AidsafeError, match="needs --model ok"):
            Pipeline("aidsafe", "aidsafe5", ModelSettings(backend="scripted-test", model="bad"))
    finally:
        unregister_backend("scripted-test")
    with pytest.raises(AidsafeError, match="unknown backend 'scripted-test'; choose"):
        Pipeline("aidsafe", "aidsafe5", ModelSettings(backend="scripted-test", model="ok"))


def test_library_defaults_live_in_the_library() -> None:
    assert default_concurrency(ModelSettings(backend="openai", model="m", base_url="http://x/v1")) == 16
    assert default_concurrency(ModelSettings(backend="local")) == 1
    assert Judge(ModelSettings(backend="fake")).settings.temperature == 0.0  # a judge samples greedily by default
    assert Judge(ModelSettings(backend="fake", temperature=0.7)).settings.temperature == 0.7


def test_generate_without_a_concurrency_keeps_16_prompts_in_flight_against_an_endpoint(tmp_path: Path, stub_server) -> None:
    stub, url = stub_server
    stub.latency = 0.05
    src, out = write_prompts(tmp_path / "in.jsonl", 40), tmp_path / "out.jsonl"
    pipe = Pipeline("aidsafe", "aidsafe5", ModelSettings(backend="openai", model="m", base_url=url))
    summary = pipe.generate(src, out, progress=False)  # no concurrency given: the backend's default
    assert summary.ok == 40
    assert 8 < stub.peak_in_flight <= 16
