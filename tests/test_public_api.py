"""The public API's surface is deliberate: ``palyra_py.client`` and ``palyra_py.testing``
keep their import paths and export exactly these names (a change here is a change users
see, so it is made on purpose, with the docs)."""

from __future__ import annotations

import importlib

import pytest

PUBLIC = {
    "palyra_py.client": ["ApiError", "AsyncClient", "Client", "EmitResult", "PalyraError",
                         "PalyraUnreachable"],
    "palyra_py.testing": ["CapturingReceiver", "ManualClock", "MemoryKeyring", "Received",
                          "running_daemon", "running_receiver", "short_state_dir"],
}


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_the_public_modules_export_exactly_their_names(name: str) -> None:
    module = importlib.import_module(name)
    assert module.__all__ == PUBLIC[name]
    assert sorted(module.__all__) == module.__all__, "keep __all__ sorted"
    for exported in module.__all__:
        assert getattr(module, exported, None) is not None, exported


async def test_the_capturing_receiver_keeps_what_it_got_and_answers_as_scripted() -> None:
    import aiohttp

    from palyra_py.testing import running_receiver

    async with running_receiver() as receiver, aiohttp.ClientSession() as http:
        receiver.script = [503]
        for expected in (503, 200):
            async with http.post(receiver.url, data=b'{"n": 1}') as answer:
                assert answer.status == expected
        got = await receiver.wait_for(2)
    assert [r.json() for r in got] == [{"n": 1}, {"n": 1}]
    assert got[0].path == "/hook"
