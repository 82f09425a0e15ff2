from pathlib import Path

from palyra_py.reasons import ANSWERS, Reason

DOC = Path(__file__).parent.parent / "docs" / "reasons.md"


def test_every_reason_has_an_answer_and_a_documented_row() -> None:
    text = DOC.read_text()
    for reason in Reason:
        answer = ANSWERS[reason]
        assert f"| {answer.status} | `{reason.value}` | {answer.summary} |" in text, reason


def test_successes_say_status_and_refusals_say_error() -> None:
    for reason, answer in ANSWERS.items():
        assert (answer.key == "status") == (answer.status < 300), reason


def test_every_setting_is_documented() -> None:
    from palyra_py.settings import SPECS

    text = (DOC.parent / "settings.md").read_text()
    for spec in SPECS:
        assert f"| `{spec.section}.{spec.key}` | `PALYRA_{spec.section.upper()}_" in text, spec


def test_the_registry_refusals_are_documented_with_their_status() -> None:
    from palyra_py.reasons import REGISTRY_ANSWERS

    prose = (DOC.parent / "admin-api.md").read_text()
    spec = (DOC.parent / "openapi.yaml").read_text()
    for code, answer in REGISTRY_ANSWERS.items():
        assert answer.key == "error" and answer.status >= 400, code
        assert f"`{code}` ({answer.status})" in prose, code
        assert f"| {answer.status} |" in spec and f"`{code}`" in spec, code
