"""The error contracts of the user surfaces, as assertions shared by the reliability tests."""
from __future__ import annotations


def assert_one_line_error(code: int, stderr: str, phrase: str = "") -> None:
    """The CLI contract for user errors: exit 2 and exactly one ``error: ...`` line, no traceback."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 2, stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert phrase.lower() in lines[0].lower(), lines[0]


def assert_json_error(response, status: int, phrase: str = "") -> None:
    """The server contract for user errors: the 4xx status and ``{"error", "detail"}`` JSON."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "detail"} and "\n" not in body["detail"], body
    assert phrase.lower() in body["detail"].lower(), body
