from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from palyra_py.events import PublishedEvent
from palyra_py.outbound.formats import render


def published(data: dict[str, Any], type_: str = "github.push",
              source: str = "gh-main") -> PublishedEvent:
    return PublishedEvent(id="01J0000000000000000000000A", type=type_,
                          timestamp="2027-01-15T08:00:00.123Z", data=data, source=source,
                          actor="github", seq=9)


DATA = {"ref": "refs/heads/main", "forced": False, "size": 3, "api_token": "tok-SECRET-1",
        "commits": [{"id": "abc"}], "repository": {"name": "x"}, "note": None,
        "Authorization": "Bearer SECRET-2"}


def slack_text_chars(message: dict[str, Any]) -> int:
    total = len(message["text"])
    for block in message["blocks"]:
        if "text" in block:
            total += len(block["text"]["text"])
        total += sum(len(f["text"]) for f in block.get("fields", []))
        total += sum(len(e["text"]) for e in block.get("elements", []))
    return total


def discord_embed_chars(embed: dict[str, Any]) -> int:
    return (len(embed["title"]) + len(embed["description"])
            + sum(len(f["name"]) + len(f["value"]) for f in embed.get("fields", [])))


def test_standard_is_the_compact_body() -> None:
    event = published({"kb": "docs", "é": "ü"})
    raw = render("standard", event)
    assert json.loads(raw) == event.body()
    assert b" " not in raw and "ü".encode() in raw


def test_slack_message() -> None:
    raw = render("slack", published(DATA))
    message = json.loads(raw)
    assert message["text"] == "github.push from gh-main"
    blocks = message["blocks"]
    assert [b["type"] for b in blocks] == ["section", "section", "context"]
    assert blocks[0]["text"] == {"type": "mrkdwn", "text": "*github.push* from `gh-main`"}
    fields = [f["text"] for f in blocks[1]["fields"]]
    assert fields == ["*ref*\nrefs/heads/main", "*forced*\nfalse", "*size*\n3", "*note*\nnull"]
    assert "01J0000000000000000000000A" in blocks[2]["elements"][0]["text"]
    assert b"SECRET" not in raw and b"api_token" not in raw


def test_slack_escapes_control_characters() -> None:
    message = json.loads(render("slack", published({"msg": "<!channel> & <http://x|y>"})))
    field = message["blocks"][1]["fields"][0]["text"]
    assert field == "*msg*\n&lt;!channel&gt; &amp; &lt;http://x|y&gt;"


def test_slack_clips_without_breaking_an_entity() -> None:
    message = json.loads(render("slack", published({"v": "a" * 158 + "<<<<"})))
    value = message["blocks"][1]["fields"][0]["text"].split("\n", 1)[1]
    assert value.endswith("…") and len(value) <= 160
    assert value == "a" * 158 + "…"


def test_slack_without_fields_has_no_empty_section() -> None:
    message = json.loads(render("slack", published({"nested": {"a": 1}})))
    assert [b["type"] for b in message["blocks"]] == ["section", "context"]


def test_discord_message() -> None:
    raw = render("discord", published(DATA))
    message = json.loads(raw)
    assert message["content"] == "github.push from gh-main"
    assert message["allowed_mentions"] == {"parse": []}
    (embed,) = message["embeds"]
    assert embed["title"] == "github.push"
    assert embed["timestamp"] == "2027-01-15T08:00:00.123Z"
    assert "gh-main" in embed["description"] and "01J0000000000000000000000A" in embed[
        "description"]
    assert [(f["name"], f["value"]) for f in embed["fields"]] == [
        ("ref", "refs/heads/main"), ("forced", "false"), ("size", "3"), ("note", "null")]
    assert b"SECRET" not in raw


def test_discord_empty_string_value_is_not_empty() -> None:
    embed = json.loads(render("discord", published({"empty": "", " ": "  "})))["embeds"][0]
    assert [(f["name"], f["value"]) for f in embed["fields"]] == [
        ("empty", '""'), ('" "', '"  "')]


def test_unknown_format() -> None:
    with pytest.raises(ValueError, match="unknown format"):
        render("teams", published({}))  # type: ignore[arg-type]


_keys = st.text(min_size=1, max_size=300)
_values = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                    st.text(max_size=3000), st.dictionaries(st.text(max_size=5), st.integers(),
                                                            max_size=2))


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(_keys, _values, max_size=40),
       st.text(min_size=1, max_size=400), st.text(min_size=1, max_size=400))
def test_chat_formats_stay_inside_documented_limits(
    data: dict[str, Any], type_: str, source: str
) -> None:
    event = published(data, type_=type_, source=source)
    slack = json.loads(render("slack", event))
    assert slack_text_chars(slack) <= 3000
    for block in slack["blocks"]:
        assert len(block.get("fields", [])) <= 10
        assert all(len(f["text"]) <= 2000 for f in block.get("fields", []))
    discord = json.loads(render("discord", event))
    assert len(discord["content"]) <= 2000
    (embed,) = discord["embeds"]
    assert len(embed["title"]) <= 256 and len(embed["description"]) <= 4096
    assert len(embed.get("fields", [])) <= 10
    for field in embed.get("fields", []):
        assert 1 <= len(field["name"]) <= 256 and 1 <= len(field["value"]) <= 1024
        assert field["name"].strip() and field["value"].strip()
    assert discord_embed_chars(embed) <= 6000
