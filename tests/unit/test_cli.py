from __future__ import annotations

import pytest

from shared.cli import build_parser, classify_request


def test_options_work_before_and_after_the_command() -> None:
    parser = build_parser()
    before = parser.parse_args(["--json", "--target", "h:1", "classify", "--labels", "a,b", "t"])
    after = parser.parse_args(["classify", "--json", "--target", "h:1", "--labels", "a,b", "t"])
    for args in (before, after):
        assert args.json is True
        assert args.target == "h:1"


def test_target_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NLP_TARGET", "gw:50051")
    args = build_parser().parse_args(["classify", "--labels", "a", "t"])
    assert args.target == "gw:50051"
    assert args.json is False


def test_labels_and_descriptions() -> None:
    args = build_parser().parse_args(
        ["classify", "--labels", " billing, bug ,", "--describe", "bug=Software crashes", "text"]
    )
    request = classify_request(args)
    assert [(label.name, label.description) for label in request.labels] == [
        ("billing", ""),
        ("bug", "Software crashes"),
    ]
    assert request.text == "text"
